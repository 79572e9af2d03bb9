"""Text normalisation shared by label lookup and free-text matching.

Two levels: `clean` keeps a label readable (it is stored for unknown labels), while `label_key` and
`tokenize` fold away the differences that never change meaning (hyphens, possessives, plurals,
parenthetical abbreviations) so that lookups compare like with like.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import TypeVar

V = TypeVar("V")
Phrase = tuple[str, ...]

_EDGE_PUNCT = " \t\r\n.,;:!?"
_SPACES = re.compile(r"\s+")
_PARENTHETICAL = re.compile(r"\([^()]*\)")
_POSSESSIVE = re.compile(r"'s\b")
_NON_WORD = re.compile(r"[^a-z0-9]+")
# Words, plus single punctuation marks that matter to negation scope.
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[.,;:!?()]")


def _lower_american(raw: str, spelling: Mapping[str, str]) -> str:
    text = unicodedata.normalize("NFKC", str(raw)).lower()
    text = text.replace("\u2019", "'").replace("_", " ")
    for british, american in spelling.items():
        text = text.replace(british, american)
    return text


def clean(raw: str, spelling: Mapping[str, str]) -> str:
    """NFKC, lower case, American spelling, single spaces, no punctuation at either end."""
    return _SPACES.sub(" ", _lower_american(raw, spelling)).strip(_EDGE_PUNCT)


def singular(word: str) -> str:
    """Crude singular: enough to equate 'drusens'/'drusen' and 'abnormalities'/'abnormality'.

    Applied to both sides of every comparison, so over-stemming ('lens' -> 'len') is harmless.
    Words ending in -ss/-us/-is (glaucomatous, retinitis) are left alone.
    """
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _fold(text: str) -> str:
    """Hyphens, slashes, possessives and plurals folded away from already-cleaned text."""
    text = _POSSESSIVE.sub("", text).replace("'", "")
    return " ".join(singular(w) for w in _NON_WORD.sub(" ", text).split())


def label_key(cleaned: str) -> str:
    """Lookup key of a cleaned label, without its parenthetical abbreviations."""
    return _fold(_PARENTHETICAL.sub(" ", cleaned))


def tokenize(text: str, spelling: Mapping[str, str]) -> list[str]:
    """Tokens for phrase matching: folded words and the punctuation marks that bound clauses."""
    text = _lower_american(text, spelling).replace("-", " ").replace("/", " ")
    text = _POSSESSIVE.sub("", text)
    return [singular(t.replace("'", "")) for t in _TOKEN.findall(text)]


def find_phrases(tokens: Sequence[str], table: Mapping[Phrase, V], max_len: int
                 ) -> list[tuple[int, int, V]]:
    """Non-overlapping (start, end, value) matches, longest first, returned in text order.

    Claiming the longest phrases first lets 'no diabetic retinopathy' win over 'diabetic
    retinopathy' and 'not ruled out' over 'ruled out', wherever they start.
    """
    candidates = [(start, start + n)
                  for start in range(len(tokens))
                  for n in range(min(max_len, len(tokens) - start), 0, -1)
                  if tuple(tokens[start:start + n]) in table]
    candidates.sort(key=lambda span: (span[0] - span[1], span[0]))
    taken = [False] * len(tokens)
    found = []
    for start, end in candidates:
        if not any(taken[start:end]):
            taken[start:end] = [True] * (end - start)
            found.append((start, end, table[tuple(tokens[start:end])]))
    return sorted(found, key=lambda match: match[0])


def phrase(text: str, spelling: Mapping[str, str]) -> Phrase:
    """A keyword or cue as the token tuple that `find_phrases` looks up."""
    return tuple(tokenize(text, spelling))


__all__ = ["Phrase", "clean", "find_phrases", "label_key", "phrase", "singular", "tokenize"]

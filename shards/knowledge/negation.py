"""Negation scope for findings mentioned in free text, in the spirit of NegEx.

A cue ("no", "absence of") negates the findings that start within `window` units after it, a post
cue ("absent", "ruled out") those within `post_window` units before it; a unit is a word or a whole
finding, so a list of multi-word findings is not cut short. Scopes stop at terminators ("but",
".", ";") and at a comma that opens a new clause. Pseudo-negations ("no change", "not only") are
claimed first and negate nothing. A finding whose own words hold a cue ("no glaucoma") is a
negative finding in its own right and is never negated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shards.knowledge.text import Phrase, find_phrases, phrase

_KINDS = ("cues", "post_cues", "pseudo", "terminators")
_PRE, _POST, _PSEUDO, _TERM = _KINDS


@dataclass(frozen=True)
class NegationRules:
    table: Mapping[Phrase, str]  # phrase -> one of _KINDS
    list_words: frozenset[str]
    window: int
    post_window: int

    @property
    def max_len(self) -> int:
        return max((len(p) for p in self.table), default=1)

    @classmethod
    def from_config(cls, config: Mapping, spelling: Mapping[str, str]) -> NegationRules:
        """Build from the `negation` mapping of the knowledge file; ValueError when malformed."""
        if not isinstance(config, Mapping):
            raise ValueError("negation must be a mapping")
        table: dict[Phrase, str] = {}
        for kind in _KINDS:
            for text in _strings(config.get(kind, []), f"negation.{kind}"):
                key = phrase(text, spelling)
                if not key:
                    raise ValueError(f"negation.{kind}: {text!r} is empty after normalisation")
                if table.get(key, kind) != kind:
                    raise ValueError(f"negation phrase {text!r} is in both {table[key]} and {kind}")
                table[key] = kind
        list_words = frozenset(w for text in _strings(config.get("list_words", []), "negation.list_words")
                               for w in phrase(text, spelling))
        windows = [config.get(name) for name in ("window", "post_window")]
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in windows):
            raise ValueError("negation.window and negation.post_window must be positive integers")
        return cls(table=table, list_words=list_words, window=windows[0], post_window=windows[1])


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a list of strings (quote YAML words such as \"no\")")
    return value


def _is_word(token: str) -> bool:
    return token[:1].isalnum()


def negated_mentions(tokens: Sequence[str], mentions: Sequence[tuple[int, int]],
                     rules: NegationRules) -> list[bool]:
    """For each (start, end) mention span in `tokens`, whether a negation scope covers it."""
    n = len(tokens)
    markers = find_phrases(tokens, rules.table, rules.max_len)
    start_of = {start: i for i, (start, _) in enumerate(mentions)}
    inside = [-1] * n  # token -> index of the mention covering it
    for i, (start, end) in enumerate(mentions):
        inside[start:end] = [i] * (end - start)

    # Unit count up to each token: words and whole mentions count one, punctuation nothing.
    units, count = [0] * n, 0
    for t, token in enumerate(tokens):
        if _is_word(token) and (inside[t] < 0 or mentions[inside[t]][0] == t):
            count += 1
        units[t] = count

    terminator = [False] * n
    pre_cue = [False] * n
    for start, end, kind in markers:
        if kind == _TERM:
            terminator[start:end] = [True] * (end - start)
        elif kind == _PRE:
            pre_cue[start:end] = [True] * (end - start)

    def continues_list(comma: int) -> bool:
        """True when only findings and list words follow the comma up to the next punctuation."""
        for t in range(comma + 1, n):
            if not _is_word(tokens[t]) or terminator[t]:
                return True
            if inside[t] < 0 and not pre_cue[t] and tokens[t] not in rules.list_words:
                return False
        return True

    stops_forward = [terminator[t] or (tokens[t] == "," and not continues_list(t)) for t in range(n)]
    stops_backward = [terminator[t] or tokens[t] == "," for t in range(n)]
    # A mention holding a cue of its own ("no glaucoma") is a negative finding, never negated.
    exempt = [any(pre_cue[start:end]) for start, end in mentions]

    negated = [False] * len(mentions)
    for start, end, kind in markers:
        if kind == _PRE:
            for t in range(end, n):
                if stops_forward[t] or units[t] - units[end - 1] > rules.window:
                    break
                if t in start_of:
                    negated[start_of[t]] = True
        elif kind == _POST:
            for t in range(start - 1, -1, -1):
                if stops_backward[t] or units[start - 1] - units[t] + 1 > rules.post_window:
                    break
                if t in start_of:
                    negated[start_of[t]] = True
    return [neg and not ex for neg, ex in zip(negated, exempt)]

"""Ophthalmic knowledge: the label vocabulary, label normalisation, prompts and caption labels.

The data lives in `ophthalmic.yaml` next to this module (package data); `load_knowledge()` parses
and validates it once and returns an immutable `Knowledge`:

    kb = load_knowledge()
    kb.normalize("Drusens.")               # 'drusen'
    kb.extract_labels("no glaucoma")       # ['no glaucoma'], a negative finding, never 'glaucoma'
    kb.prompts("drusen", attribute="noisy")

Label ids are positions in `kb.vocabulary`, stable across versions because the file is append-only.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import yaml

from shards.knowledge.negation import NegationRules, negated_mentions
from shards.knowledge.schema import keyword_table, spelling_of, synonym_tables, validate_knowledge
from shards.knowledge.text import Phrase, clean, find_phrases, label_key, tokenize

KNOWLEDGE_FILE = "ophthalmic.yaml"

# Names other modules rely on (the synthetic generator draws from them); the bundled file has them.
REQUIRED_CATEGORIES = (
    "normal", "no diabetic retinopathy", "mild diabetic retinopathy", "moderate diabetic retinopathy",
    "severe diabetic retinopathy", "proliferative diabetic retinopathy", "diabetic retinopathy",
    "glaucoma", "no glaucoma", "increased cup disc", "age related macular degeneration", "drusen",
    "microaneurysms", "hemorrhages", "hard exudates", "soft exudates", "neovascularization",
    "macular edema",
)

_SPACES = re.compile(r"\s+")
_MEMO_LIMIT = 200_000  # distinct raw labels remembered by normalize(); the long tail is free text


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    group: str
    synonyms: tuple[str, ...]
    keywords: tuple[str, ...]
    description: str


@dataclass(frozen=True, eq=False)
class Knowledge:
    version: int
    categories: tuple[Category, ...]
    templates: tuple[str, ...]
    attributes: Mapping[str, str]
    spelling: Mapping[str, str]
    negation: NegationRules = field(repr=False)
    _exact: Mapping[str, int] = field(repr=False)
    _keyed: Mapping[str, int] = field(repr=False)
    _keywords: Mapping[Phrase, int] = field(repr=False)
    _memo: dict[str, str | None] = field(default_factory=dict, repr=False)

    @functools.cached_property
    def vocabulary(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.categories)

    @functools.cached_property
    def _ids(self) -> Mapping[str, int]:
        return MappingProxyType({c.name: c.id for c in self.categories})

    @functools.cached_property
    def _max_keyword(self) -> int:
        return max(len(p) for p in self._keywords)

    # ---- labels ----
    def clean(self, raw: str) -> str:
        """Normalised text form of a label ('' for blank): NFKC, lower case, American spelling."""
        return clean(raw, self.spelling)

    def normalize(self, raw: str) -> str | None:
        """Canonical name of a raw label, or None when it is not a known category."""
        if raw in self._memo:
            return self._memo[raw]
        cleaned = self.clean(raw)
        index = self._exact.get(cleaned)
        if index is None:
            index = self._keyed.get(label_key(cleaned))
        name = None if index is None else self.categories[index].name
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[raw] = name
        return name

    def normalize_all(self, raws: Iterable[str]) -> tuple[list[str], list[str]]:
        """(canonical names, cleaned unknown labels), each de-duplicated in first-seen order."""
        canonical: dict[str, None] = {}
        unknown: dict[str, None] = {}
        for raw in raws:
            name = self.normalize(raw)
            if name is not None:
                canonical[name] = None
            elif cleaned := self.clean(raw):
                unknown[cleaned] = None
        return list(canonical), list(unknown)

    def category(self, name: str) -> Category:
        """The category of a canonical name or of anything `normalize` resolves; KeyError otherwise."""
        index = self._ids.get(name)
        if index is None:
            canonical = self.normalize(name)
            if canonical is None:
                raise KeyError(f"unknown category {name!r}")
            index = self._ids[canonical]
        return self.categories[index]

    def label_ids(self, names: Iterable[str]) -> list[int]:
        """Sorted, de-duplicated label ids of the given category names."""
        return sorted({self.category(name).id for name in names})

    def multi_hot(self, names: Iterable[str]) -> np.ndarray:
        vector = np.zeros(len(self.categories), dtype=np.uint8)
        vector[self.label_ids(names)] = 1
        return vector

    def description(self, name: str) -> str:
        return self.category(name).description

    def group(self, name: str) -> str:
        return self.category(name).group

    # ---- free text ----
    def extract_labels(self, text: str) -> list[str]:
        """Canonical names mentioned and not negated in free text, in order of first mention.

        Keywords match whole words, longest first. Negative findings are keywords of their own
        ('no glaucoma' -> ['no glaucoma']); a finding in a negation scope is dropped
        ('no signs of glaucoma' -> []).
        """
        tokens = tokenize(text, self.spelling)
        mentions = find_phrases(tokens, self._keywords, self._max_keyword)
        negated = negated_mentions(tokens, [(s, e) for s, e, _ in mentions], self.negation)
        found: dict[str, None] = {}
        for (_, _, index), is_negated in zip(mentions, negated):
            if not is_negated:
                found[self.categories[index].name] = None
        return list(found)

    # ---- prompts ----
    def prompts(self, name: str, attribute: str | None = None) -> list[str]:
        """Every template filled with the category and attribute, then the description.

        Unknown (free-text) labels are filled in their cleaned form, without a description.
        """
        canonical = self.normalize(name)
        label = canonical or self.clean(name)
        if not label:
            raise ValueError("cannot build prompts for a blank category")
        wanted = self.clean(attribute or "")
        attribute_text = self.attributes.get(wanted, wanted)
        filled = (t.replace("[CLS]", label).replace("[ATR]", attribute_text) for t in self.templates)
        prompts = [_SPACES.sub(" ", p).strip() for p in filled]
        if canonical is not None:
            prompts.append(self.description(canonical))
        return list(dict.fromkeys(prompts))


def parse_knowledge(data: Any) -> Knowledge:
    """Validate a parsed knowledge YAML (ValueError when malformed) and build the lookups."""
    validate_knowledge(data)
    spelling = spelling_of(data)
    raw_categories = data["categories"]
    exact, keyed = synonym_tables(raw_categories, spelling)
    categories = tuple(
        Category(id=i, name=c["name"], group=c["group"].strip(),
                 synonyms=tuple(c.get("synonyms") or ()), keywords=tuple(c.get("keywords") or ()),
                 description=_SPACES.sub(" ", c["description"]).strip())
        for i, c in enumerate(raw_categories))
    return Knowledge(
        version=data["version"],
        categories=categories,
        templates=tuple(data["templates"]),
        attributes=MappingProxyType({clean(k, spelling): v.strip()
                                     for k, v in (data.get("attributes") or {}).items()}),
        spelling=MappingProxyType(spelling),
        negation=NegationRules.from_config(data["negation"], spelling),
        _exact=MappingProxyType(exact),
        _keyed=MappingProxyType(keyed),
        _keywords=MappingProxyType(keyword_table(raw_categories, spelling)),
    )


@functools.lru_cache(maxsize=8)
def _load(path: str | None) -> Knowledge:
    if path is None:
        text = importlib.resources.files(__name__).joinpath(KNOWLEDGE_FILE).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return parse_knowledge(yaml.safe_load(text))


def load_knowledge(path: str | os.PathLike[str] | None = None) -> Knowledge:
    """The bundled knowledge (cached), or the YAML at `path` (cached per resolved path)."""
    return _load(None if path is None else str(Path(path).resolve()))


__all__ = ["Category", "Knowledge", "KNOWLEDGE_FILE", "REQUIRED_CATEGORIES", "load_knowledge",
           "parse_knowledge", "validate_knowledge"]

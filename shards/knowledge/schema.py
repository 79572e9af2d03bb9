"""Checks on a knowledge file and the lookup tables built from it.

Every check raises ValueError with the offending entry named, so a bad user-supplied YAML fails on
load rather than as a silently wrong label later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shards.knowledge.negation import NegationRules
from shards.knowledge.text import Phrase, clean, label_key, phrase

CATEGORY_FIELDS = {"name", "group", "synonyms", "keywords", "description"}
TOP_LEVEL_FIELDS = {"version", "categories", "templates", "attributes", "spelling", "negation"}


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where} must be a list of non-empty strings (quote YAML words such as \"no\")")
    return value


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{where} must map strings to strings")
    return dict(value)


def spelling_of(data: Mapping) -> dict[str, str]:
    return _str_map(data.get("spelling"), "spelling")


def _register(table: dict, origin: dict, key: Any, index: int, text: str, names: Sequence[str],
              what: str) -> None:
    """Add key -> category index; the same key for two categories is a ValueError naming both texts."""
    other = table.setdefault(key, index)
    origin.setdefault(key, text)
    if other != index:
        raise ValueError(f"{what} {origin[key]!r} of {names[other]!r} and {what} {text!r} of "
                         f"{names[index]!r} normalise alike: a {what} may belong to one category only")


def synonym_tables(categories: Sequence[Mapping], spelling: Mapping[str, str]
                   ) -> tuple[dict[str, int], dict[str, int]]:
    """(cleaned text -> id, folded key -> id) over every name and synonym."""
    names = [c["name"] for c in categories]
    exact: dict[str, int] = {}
    keyed: dict[str, int] = {}
    exact_origin: dict[str, str] = {}
    keyed_origin: dict[str, str] = {}
    for index, category in enumerate(categories):
        for text in [category["name"], *(category.get("synonyms") or [])]:
            cleaned = clean(text, spelling)
            if not label_key(cleaned):
                raise ValueError(f"synonym {text!r} of {names[index]!r} is empty after normalisation")
            _register(exact, exact_origin, cleaned, index, text, names, "synonym")
            # Folded keys can collide where cleaned texts do not ('drusens' vs 'drusen').
            _register(keyed, keyed_origin, label_key(cleaned), index, text, names, "synonym")
    return exact, keyed


def keyword_table(categories: Sequence[Mapping], spelling: Mapping[str, str]) -> dict[Phrase, int]:
    """Token phrase -> id over every name and keyword."""
    names = [c["name"] for c in categories]
    table: dict[Phrase, int] = {}
    origin: dict[Phrase, str] = {}
    for index, category in enumerate(categories):
        for text in [category["name"], *(category.get("keywords") or [])]:
            key = phrase(text, spelling)
            if not key:
                raise ValueError(f"keyword {text!r} of {names[index]!r} is empty after normalisation")
            _register(table, origin, key, index, text, names, "keyword")
    return table


def validate_knowledge(data: Any) -> None:
    """Raise ValueError unless `data` (a parsed knowledge YAML) is well formed and unambiguous."""
    if not isinstance(data, Mapping):
        raise ValueError("the knowledge file must be a mapping")
    unknown = set(data) - TOP_LEVEL_FIELDS
    if unknown:
        raise ValueError(f"unknown top-level fields: {sorted(unknown)}")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError("version must be a positive integer")
    spelling = spelling_of(data)

    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise ValueError("categories must be a non-empty list")
    seen: set[str] = set()
    for position, category in enumerate(categories):
        if not isinstance(category, Mapping):
            raise ValueError(f"category #{position} must be a mapping")
        name = category.get("name")
        where = f"category #{position} ({name!r})"
        if set(category) - CATEGORY_FIELDS:
            raise ValueError(f"{where}: unknown fields {sorted(set(category) - CATEGORY_FIELDS)}")
        for field in ("name", "group", "description"):
            if not isinstance(category.get(field), str) or not category[field].strip():
                raise ValueError(f"{where}: {field} must be a non-empty string")
        if clean(name, spelling) != name:
            raise ValueError(f"{where}: name must be in normalised form {clean(name, spelling)!r}")
        if name in seen:
            raise ValueError(f"duplicate category name {name!r}")
        seen.add(name)
        _str_list(category.get("synonyms"), f"{where}.synonyms")
        _str_list(category.get("keywords"), f"{where}.keywords")
    synonym_tables(categories, spelling)
    keyword_table(categories, spelling)

    templates = _str_list(data.get("templates"), "templates")
    if not templates or not all("[CLS]" in t for t in templates):
        raise ValueError("templates must be a non-empty list, each holding [CLS]")
    _str_map(data.get("attributes"), "attributes")
    NegationRules.from_config(data.get("negation"), spelling)

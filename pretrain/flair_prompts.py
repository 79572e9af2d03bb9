"""FLAIR's zero-shot text side: its class lists per evaluation dataset and its prompts per class.

    ref = load_flair_reference()
    ref.classes("25_REFUGE")   # ['no glaucoma', 'glaucoma']
    ref.prompts("glaucoma")    # ['A fundus photograph of optic nerve abnormalities', ..., '... of glaucoma']

The data (pretrain/flair_reference.yaml) restates FLAIR's local_data/experiments.py target lists and the
flair/modeling/dictionary.py definitions of those classes. `prompts` follows FLAIRModel.compute_text_embeddings
(flair/modeling/model.py) with domain_knowledge=True, FLAIR's default in main_transferability.py: a class in
the dictionary is prompted with each definition phrase, then with its own name unless a phrase already is the
name or the class is a myopic-maculopathy grade (FLAIR: "class names for MMAC are not informative"); a class
outside the dictionary with its name alone. Each phrase fills [CLS] of FLAIR's caption template.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["FLAIR_CAPTION", "FlairReference", "flair_prompt_phrases", "load_flair_reference"]

FLAIR_CAPTION = "A fundus photograph of [CLS]"  # FLAIRModel's default `caption`
REFERENCE_FILE = "flair_reference.yaml"


def flair_prompt_phrases(name: str, definitions: dict[str, list[str]]) -> list[str]:
    """The phrases that fill [CLS] for class `name` (compute_text_embeddings' rule, module docstring)."""
    if name not in definitions:
        return [name]
    phrases = list(definitions[name])
    if name not in phrases and "myopic maculopathy" not in name:
        phrases.append(name)
    return phrases


@dataclass(frozen=True)
class FlairReference:
    class_lists: dict[str, list[str]]
    datasets: dict[str, str]
    definitions: dict[str, list[str]]

    def classes(self, dataset: str) -> list[str] | None:
        """FLAIR's target classes of `dataset` in label order, or None when FLAIR does not evaluate it."""
        key = self.datasets.get(dataset)
        return list(self.class_lists[key]) if key is not None else None

    def prompts(self, name: str) -> list[str]:
        return [FLAIR_CAPTION.replace("[CLS]", phrase) for phrase in flair_prompt_phrases(name, self.definitions)]


def _check(data: Any) -> FlairReference:
    """The parsed file as a FlairReference; ValueError naming the first malformed entry."""
    if not isinstance(data, dict):
        raise ValueError(f"{REFERENCE_FILE}: expected a mapping at the top level")
    lists, datasets, definitions = (data.get(k) or {} for k in ("class_lists", "datasets", "definitions"))
    for where, table in (("class_lists", lists), ("definitions", definitions)):
        for key, values in table.items():
            if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"{REFERENCE_FILE}: {where}.{key} must be a list of non-empty strings")
    for dataset, key in datasets.items():
        if key not in lists:
            raise ValueError(f"{REFERENCE_FILE}: datasets.{dataset} names an unknown class list {key!r}")
    return FlairReference({str(k): v for k, v in lists.items()}, {str(k): str(v) for k, v in datasets.items()},
                          {str(k): v for k, v in definitions.items()})


@functools.cache
def load_flair_reference() -> FlairReference:
    text = importlib.resources.files("pretrain").joinpath(REFERENCE_FILE).read_text(encoding="utf-8")
    return _check(yaml.safe_load(text))

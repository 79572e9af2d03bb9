"""Bad-sample and reject messages quote a short escaped prefix of the bad bytes, never the raw bytes (issue 14)."""

from __future__ import annotations

import logging
import random

from pretrain.samples import SKIPPED, decode_sample, eval_transform
from shards.build import BuildConfig, build
from shards.knowledge import load_knowledge
from shards.printable import error_text, printable, printable_text
from tests.shards.helpers import fundus_like, jpeg_bytes, save, write_flair_csv

GARBAGE = b"\x00\xff\xfe\x1b[31m\x89PNG\x07" * 4000  # binary, a terminal escape, a bell; 44 kB on "one line"


def _raw_bytes_in(text: str) -> bool:
    """True when a control character other than newline reached the text unescaped."""
    return any(ord(c) < 32 and c != "\n" for c in text)


def test_printable_cuts_and_escapes():
    assert printable(b"ok") == "b'ok'"
    shown = printable(GARBAGE)
    assert shown.startswith(r"b'\x00\xff\xfe\x1b[31m") and shown.endswith(f"... ({len(GARBAGE)} bytes)")
    assert len(shown) < 250 and not _raw_bytes_in(shown)
    assert printable_text("a\x1b[31mb") == r"a\x1b[31mb" and printable_text("plain é") == "plain é"
    try:
        GARBAGE.decode("utf-8")
    except UnicodeDecodeError as exc:
        assert len(repr(exc)) > len(GARBAGE)  # the reason this module exists
        assert error_text(exc).startswith("UnicodeDecodeError: 'utf-8' codec can't decode") and len(error_text(exc)) < 250


def _decode(sample: dict) -> None:
    kb = load_knowledge()
    decode_sample(sample, kb=kb, vocab_ids={}, transform=eval_transform(32), rng=random.Random(0))


def test_a_binary_json_member_is_logged_as_a_short_escaped_prefix(caplog):
    SKIPPED.reset()
    with caplog.at_level(logging.WARNING, logger="pretrain.data"):
        _decode({"__key__": "k1", "jpg": jpeg_bytes(0), "json": GARBAGE})
        _decode({"__key__": "k2", "jpg": GARBAGE, "json": b'{"categories": ["glaucoma"]}'})
    assert SKIPPED.total == 2
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    for message in messages:
        assert not _raw_bytes_in(message) and len(message) < 600, message
        assert r"\x00\xff\xfe" in message and f"({len(GARBAGE)} bytes)" in message
    assert "sample k1: bad json" in messages[0] and "sample k2: bad image" in messages[1]
    SKIPPED.reset()


def test_build_reject_summary_escapes_control_characters(tmp_path, caplog):
    save(fundus_like(0), tmp_path / "img" / "ok.jpg")
    csv = write_flair_csv(tmp_path / "frame.csv", [("ok.jpg", "[]", "['glaucoma']"),
                                                   ("\x1b[31mred.jpg", "[]", "['glaucoma']"),
                                                   ("nul\x00.jpg", "[]", "['glaucoma']")])
    with caplog.at_level(logging.WARNING, logger="shards.build"):
        index = build(BuildConfig(out=tmp_path / "out", sources=[f"flair:{csv}:{tmp_path / 'img'}"], workers=1,
                                  progress=False))
    assert index["totals"] == {**index["totals"], "written": 1, "rejected": 2}
    messages = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert any(r"\x1b[31mred.jpg" in m for m in messages) and any("NUL byte" in m for m in messages), messages
    assert not any(_raw_bytes_in(m) for m in messages), messages

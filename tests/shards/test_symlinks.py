"""Symlinks never lead a build outside the image root (shards.readers.fields.resolve_image): a link to a file
or a folder outside is rejected with its own reason, counted and logged like any rejected row, and the outside
image never reaches a shard; links that stay inside the root are read as usual."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from shards.build import BuildConfig, build
from tests.shards.helpers import fundus_like, save, write_flair_csv

REASON = "symlink escapes the image root"


def test_links_out_of_the_root_are_rejected_and_links_inside_are_read(tmp_path, caplog):
    outside = tmp_path / "outside"
    secret = save(fundus_like(100), outside / "secret.png")
    deep = save(fundus_like(101), outside / "folder" / "deep.png")
    root = tmp_path / "root"
    save(fundus_like(1), root / "good.png")
    inside_target = save(fundus_like(2), root / "sub" / "real.png")
    (root / "to_file.png").symlink_to(secret)
    (root / "to_folder").symlink_to(outside / "folder", target_is_directory=True)
    (root / "inside.png").symlink_to(inside_target)
    (root / "sub_link").symlink_to(root / "sub", target_is_directory=True)
    frame = write_flair_csv(tmp_path / "01_LINKS.csv", [
        ("good.png", "[]", "['glaucoma']"),
        ("to_file.png", "[]", "['glaucoma']"),
        ("to_folder/deep.png", "[]", "['glaucoma']"),
        ("inside.png", "[]", "['glaucoma']"),          # a link to a file inside the root: fine
        ("sub_link/real.png", "[]", "['normal']"),     # through a folder link inside the root: the same bytes
    ])
    out = tmp_path / "shards"
    with caplog.at_level("WARNING"):
        index = build(BuildConfig(out=out, sources=[f"flair:{frame}:{root}"], image_format="png", workers=1,
                                  progress=False))

    assert index["totals"] == {**index["totals"], "rows_read": 5, "written": 2, "rejected": 2, "duplicates": 1}
    assert index["rejects_by_reason"] == {REASON: 2}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["path"], r["reason"]) for r in rejects] == [
        ("to_file.png", f"{REASON}: 'to_file.png' -> {secret.resolve()}"),
        ("to_folder/deep.png", f"{REASON}: 'to_folder/deep.png' -> {deep.resolve()}"),
    ]
    assert f"rejected 2 row(s): {REASON}" in caplog.text

    outside_sha = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (secret, deep)}
    written = []
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()
                assert secret.read_bytes() not in data and deep.read_bytes() not in data
                if member.name.endswith(".json"):
                    written.append(json.loads(data))
    assert sorted(m["path"] for m in written) == ["good.png", "inside.png"]
    assert not outside_sha & {m["sha256"] for m in written}

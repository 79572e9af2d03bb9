"""`retina-shards inspect` / `stats` / `verify` on damaged shards: one line naming the shard (and the sample), what
is wrong, then what could still be read; exit 1, no traceback (issue 14)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from shards import cli
from shards.tarshard import ShardReadError, read_shard


@pytest.fixture
def shard_set(tiny_shards, tmp_path) -> Path:
    """A private copy of the 40-sample public set (4 shards of 10), to damage."""
    return Path(shutil.copytree(tiny_shards["public"], tmp_path / "public"))


def _first_shard(folder: Path) -> Path:
    return folder / json.loads((folder / "index.json").read_text())["shards"][0]["name"]


def _rewrite(shard: Path, change) -> str:
    """Rewrite `shard` with change(name, data) -> data or None (drop); returns the key of the first changed member."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    changed = None
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            new = change(member.name, data) if changed is None else data
            if new is not data:
                changed = member.name.rpartition(".")[0]
            if new is not None:
                member.size = len(new)
                tar.addfile(member, io.BytesIO(new))
    assert changed is not None
    return changed


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["-q", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.mark.parametrize("command", ["inspect", "stats"])
def test_a_sample_without_its_json(shard_set, capsys, command):
    shard = _first_shard(shard_set)
    key = _rewrite(shard, lambda name, data: None if name.endswith(".json") else data)
    code, out, err = _run(capsys, command, str(shard_set), *(["-n", "40"] if command == "inspect" else []))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 2, err
    assert lines[0].endswith(f"{shard}: sample {key}: no json member (members: jpg, txt)")
    assert lines[1].endswith(f"1 problem(s) in {shard_set}; " + ("showed" if command == "inspect" else "counted")
                             + " 39 readable sample(s)")
    if command == "stats":
        assert out.startswith("samples 39 ")


def test_a_binary_json_is_quoted_as_an_escaped_prefix(shard_set, capsys):
    shard = _first_shard(shard_set)
    key = _rewrite(shard, lambda name, data: b"\x00\xff\x1b[31m" * 500 if name.endswith(".json") else data)
    code, out, err = _run(capsys, "stats", str(shard_set), "--json")
    problem = json.loads(out)["problems"]
    assert code == 1 and len(problem) == 1 and problem[0] in err
    assert f"{shard}: sample {key}: json does not parse" in problem[0]
    assert r"starts b'\x00\xff\x1b[31m" in problem[0] and "(3500 bytes)" in problem[0] and len(problem[0]) < 400
    assert "\x1b" not in err and "\x00" not in err


def test_a_truncated_shard_says_so_and_the_rest_is_still_counted(shard_set, capsys):
    shard = _first_shard(shard_set)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    code, out, err = _run(capsys, "stats", str(shard_set), "--json")
    stats = json.loads(out)
    assert code == 1 and len(stats["problems"]) == 1
    assert stats["problems"][0].startswith(f"{shard}: truncated tar")
    complete = int(stats["problems"][0].split("; ")[-1].split()[0])
    assert 0 < complete < 10 and stats["samples"] == 30 + complete
    with pytest.raises(ShardReadError, match="truncated tar") as raised:
        read_shard(shard)
    assert len(raised.value.samples) == complete


def test_a_garbled_shard_is_named_with_the_byte_where_it_breaks(shard_set, capsys):
    shard = _first_shard(shard_set)
    data = bytearray(shard.read_bytes())
    members = tarfile.open(shard).getmembers()
    at = members[3].offset  # the fourth header (tarfile would take this garbage for a quiet end of the archive)
    data[at:at + 600] = b"\x07garbage" * 75
    shard.write_bytes(bytes(data))
    code, _, err = _run(capsys, "inspect", str(shard_set), "-n", "40")
    assert code == 1 and f"{shard}: garbled tar: no valid header at byte {at}" in err
    assert r"starts b'\x07garbage" in err
    code, out, _ = _run(capsys, "verify", str(shard_set))
    assert code == 1 and f"{shard.name}: unreadable: garbled tar" in out


def test_a_sound_set_reports_no_problem(tiny_shards, capsys):
    code, out, err = _run(capsys, "stats", str(tiny_shards["public"]), "--json")
    assert code == 0 and err == "" and json.loads(out)["problems"] == [] and json.loads(out)["samples"] == 40


def test_evaluation_names_a_damaged_sample(tiny_shards, tmp_path):
    from pretrain.eval_inputs import EvalInputError, shard_metadata

    folder = Path(shutil.copytree(tiny_shards["eval"], tmp_path / "eval"))
    shard = _first_shard(folder)
    key = _rewrite(shard, lambda name, data: b"\x00\xff" * 300 if name.endswith(".json") else data)
    with pytest.raises(EvalInputError) as raised:
        shard_metadata(folder, "test")
    message = str(raised.value)
    assert message.startswith(f"{shard}: sample {key}: no usable json member (JSONDecodeError: ")
    assert r"starts b'\x00\xff" in message and "(600 bytes)" in message and "\x00" not in message

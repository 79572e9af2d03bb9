"""Every command that writes refuses an output path that is a file, lies under a file or cannot be written,
naming the flag and the path, before any work (issue 14)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster import cli as cluster_cli
from pretrain.commands import ablate, export_hf, import_hf, text_pretrain
from pretrain.commands import evaluate as eval_cli
from pretrain.commands import train as train_cli
from shards import cli as shards_cli
from shards.output_paths import OutputPathError, check_output_dir, check_output_file

CONFIGS = Path(__file__).resolve().parents[2] / "pretrain" / "configs"


def _commands(tmp_path: Path, shards) -> dict[str, tuple]:
    """name -> (main, argv with OUT where the output goes, flag named in the error, prog)."""
    source = f"flair:{shards['sources']['public'][0]}"
    train = ["--config", str(CONFIGS / "tiny_cpu.yaml"), "--data.public", str(shards["public"]),
             "--data.elite", str(shards["elite"])]
    return {
        "train": (train_cli.cli_main, [*train, "--run.dir", "OUT"], "--run.dir", "retina-pretrain train"),
        "text-pretrain": (text_pretrain.cli_main, ["--run.dir", "OUT"], "--run.dir", "retina-pretrain text-pretrain"),
        "ablate": (ablate.cli_main, ["--out", "OUT"], "--out", "retina-pretrain ablate"),
        "eval": (eval_cli.cli_main, ["--run", str(tmp_path), "--eval_shards", str(shards["eval"]), "--out", "OUT"],
                 "--out", "retina-pretrain eval"),
        "export-hf": (export_hf.cli_main, [str(tmp_path), "OUT"], "OUT", "retina-pretrain export-hf"),
        "import-hf": (import_hf.cli_main, [str(tmp_path), "--vision_only", "OUT"], "--vision_only",
                      "retina-pretrain import-hf"),
        "shards build": (shards_cli.main, ["-q", "build", "--out", "OUT", "--source", source], "--out",
                         "retina-shards build"),
        "shards synth": (shards_cli.main, ["-q", "synth", "--out", "OUT"], "--out", "retina-shards synth"),
        "cluster shards": (cluster_cli.main, ["shards", "--out", "OUT", "--source", source], "--out",
                           "retina-cluster shards"),
        "cluster embed": (cluster_cli.main, ["embed", "--run", str(tmp_path), "--shards", str(shards["eval"]),
                                             "--out", "OUT"], "--out", "retina-cluster embed"),
    }


NAMES = ["train", "text-pretrain", "ablate", "eval", "export-hf", "import-hf", "shards build", "shards synth",
         "cluster shards", "cluster embed"]


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("where", ["the file", "under the file"])
def test_an_output_that_is_or_lies_under_a_file_is_refused(tmp_path, capsys, tiny_shards, a_file, name, where):
    main, argv, flag, prog = _commands(tmp_path, tiny_shards)[name]
    out = a_file if where == "the file" else a_file / "sub" / "dir"
    code = main([str(out) if a == "OUT" else a for a in argv])
    err = capsys.readouterr().err
    why = "exists and is a file, not a folder" if where == "the file" else f"{a_file} is a file, not a folder"
    assert code == 2 and err == f"{prog}: error: {flag} {out}: {why}\n"
    assert a_file.read_text() == "not a folder\n"


def test_an_output_where_nothing_can_be_made_is_refused(capsys, tmp_path, tiny_shards):
    # /proc takes no new folder, whoever asks (root included); a chmod 555 folder is the test below
    main, argv, flag, prog = _commands(tmp_path, tiny_shards)["train"]
    code = main([a if a != "OUT" else "/proc/retinascale-run" for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"{prog}: error: {flag} /proc/retinascale-run: cannot write in /proc (")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode 555 folder")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    try:
        with pytest.raises(OutputPathError, match=f"--out {folder}: cannot write in the folder"):
            check_output_dir(folder, "--out")
        with pytest.raises(OutputPathError, match=f"--out {folder / 'x'}: cannot write in {folder}"):
            check_output_dir(folder / "x", "--out")
    finally:
        folder.chmod(0o755)


def test_writable_outputs_pass_and_nothing_is_left_behind(tmp_path, a_file):
    check_output_dir(tmp_path / "new" / "run", "--out")
    check_output_dir(tmp_path, "--out")
    check_output_file(a_file, "--plot")
    check_output_file(tmp_path / "stats.png", "--plot")
    check_output_dir("s3://bucket/run", "--out")  # left to whatever writes it
    with pytest.raises(OutputPathError, match="is a folder, not a file"):
        check_output_file(tmp_path, "--plot")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]

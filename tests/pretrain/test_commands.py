"""The command lines of retina-pretrain: every config field in --help, --print_config round trips, old flags."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from pretrain.commands import ablate as ablate_cli
from pretrain.commands import evaluate as eval_cli
from pretrain.commands import export_hf, import_hf
from pretrain.commands import text_pretrain as text_pretrain_cli
from pretrain.commands import train as train_cli
from pretrain.config import field_docs, load_config
from pretrain.text_pretrain import TextPretrainConfig
from pretrain.train import TrainConfig
from shards.commandline import Command, command_parser, parse_command

CONFIGS = Path(__file__).resolve().parents[2] / "pretrain" / "configs"


def _output(capsys, cli_main, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    assert exc.value.code == 0
    return capsys.readouterr().out


def _squeeze(text: str) -> str:
    return "".join(text.split())  # help wraps lines anywhere, even after a hyphen


def _first_words(doc: str) -> str:
    return _squeeze(" ".join(doc.split()[:6])).rstrip(".")  # a group title drops its final period


def _fields(cls: type, prefix: str = ""):
    """(dotted key, docstring, dataclass of an Optional section or None, is a section) for every field."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], prefix + f.name
        optional = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        yield key, docs[f.name], optional[0] if optional else None, dataclasses.is_dataclass(tp)
        if dataclasses.is_dataclass(tp):
            yield from _fields(tp, key + ".")


@pytest.mark.parametrize("cli_main, cls", [(train_cli.cli_main, TrainConfig),
                                           (text_pretrain_cli.cli_main, TextPretrainConfig)],
                         ids=["train", "text-pretrain"])
def test_help_shows_every_field_with_its_docstring(capsys, cli_main, cls):
    text = _squeeze(_output(capsys, cli_main, ["--help"]))
    fields = list(_fields(cls))
    assert any("." in key for key, *_ in fields)  # nested sections are walked
    for key, doc, optional, section in fields:
        assert _first_words(doc) in text, f"docstring of {key} missing from --help"
        if section:
            continue  # a section's docstring titles its group of dotted options
        assert f"--{key}" in text, f"--{key} missing from --help"
        if optional is not None:  # an Optional section lists its fields under --KEY.help
            assert f"--{key}.help" in text
            sub = _squeeze(_output(capsys, cli_main, [f"--{key}.help"]))
            for sub_key, sub_doc, *_ in _fields(optional, key + "."):
                assert f"--{sub_key}" in sub and _first_words(sub_doc) in sub


@pytest.mark.parametrize("config", ["flair_vit_b16_512.yaml", "keepfit_v1_cpu.yaml", "demo_cpu.yaml"])
def test_print_config_loads_back_to_the_same_config(capsys, tmp_path, config):
    overrides = ["--run.steps", "20", "--engine.lr", "3e-4", "--data.public", "null", "--engine.betas", "[0.8,0.9]"]
    printed = _output(capsys, train_cli.cli_main, ["--config", str(CONFIGS / config), *overrides, "--print_config"])
    assert "base:" not in printed  # the base chain is resolved
    (tmp_path / "printed.yaml").write_text(printed, encoding="utf-8")
    expected = load_config(TrainConfig, CONFIGS / config, overrides)
    assert load_config(TrainConfig, tmp_path / "printed.yaml") == expected
    assert (expected.run.steps, expected.engine.lr, expected.data.public, expected.engine.betas) == \
        (20, 3e-4, None, (0.8, 0.9))


def test_train_rejects_a_typo_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.cli_main(["--config", str(CONFIGS / "demo_cpu.yaml"), "--run.stepz", "3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("retina-pretrain train: error: unrecognized arguments: --run.stepz 3")
    assert "did you mean --run.steps?" in err


def _parse(module, command: Command, argv: list[str]):
    return parse_command(command_parser(command, prog=module.PROG), argv)[1]


def test_eval_keeps_the_argparse_spellings():
    from pretrain.evaluate import EvalConfig

    command = Command(EvalConfig)
    old = _parse(eval_cli, command, ["--run", "r", "--eval-shards", "e", "--retrieval-shards", "s", "--k-shots", "1",
                                     "2", "--k-shot-repeats", "2", "--batch-size", "16", "--no-linear-probe",
                                     "--no-prompt-ensemble", "--report", "--probe-train-fraction", "0.25"])
    new = _parse(eval_cli, command, ["--run", "r", "--eval_shards", "e", "--retrieval_shards", "s", "--k_shots",
                                     "[1, 2]", "--k_shot_repeats", "2", "--batch_size", "16", "--linear_probe",
                                     "false", "--prompt_ensemble", "false", "--report", "true",
                                     "--probe_train_fraction", "0.25"])
    assert old == new == EvalConfig(run="r", eval_shards="e", retrieval_shards="s", k_shots=[1, 2], k_shot_repeats=2,
                                    batch_size=16, linear_probe=False, prompt_ensemble=False, report=True,
                                    probe_train_fraction=0.25)
    assert _parse(eval_cli, command, ["--run", "r", "--k-shots", "--report"]).k_shots == []  # no k-shot probes
    assert _parse(eval_cli, command, ["--run", "r", "--k-shots"]).k_shots == []


def test_eval_requires_run_and_shards(capsys):
    assert eval_cli.cli_main(["--run", "r"]) == 2
    assert "--run and --eval_shards are required" in capsys.readouterr().err


def test_export_hf_flags(capsys):
    command = Command(export_hf.ExportArgs, **export_hf.COMMAND_ARGS)
    args = _parse(export_hf, command, ["runs/x", "out", "--eval", "m.json", "--no-verify", "--vision-only",
                                       "--config", "c.yaml", "--overwrite"])
    assert args == export_hf.ExportArgs(checkpoint="runs/x", out="out", config="c.yaml", eval_results="m.json",
                                        overwrite=True, verify=False, vision_only=True)
    for flag in (["--caption-decoder-heads", "4"], ["--caption_decoder_heads=4"]):
        with pytest.raises(SystemExit) as exc:
            export_hf.cli_main(["runs/x", "out", *flag])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "was removed" in err and "model.caption_decoder.num_heads" in err and "no longer needed" in err


def test_import_hf_needs_exactly_one_output(capsys):
    assert import_hf.cli_main(["exported/x"]) == 2
    assert import_hf.cli_main(["exported/x", "--out", "a.yaml", "--vision-only", "v"]) == 2
    assert "exactly one of --out, --vision_only and --text_only" in capsys.readouterr().err


def test_ablate_flags():
    from pretrain.ablate import AblateConfig

    command = Command(AblateConfig, aliases=ablate_cli.ALIASES)
    args = _parse(ablate_cli, command,
                  ["--out", "o", "--methods", "clip", "keepfit_v1", "--steps", "2", "--batch-size", "8", "--synth",
                   "24", "16", "30", "--eval", "e", "--zero-stage", "2", "--seeds", "0", "1", "2", "--from-flair",
                   "keepfit_v1", "--flair-init-steps", "3"])
    assert args == AblateConfig(out="o", methods=["clip", "keepfit_v1"], steps=2, batch_size=8, synth=[24, 16, 30],
                                eval_shards="e", zero_stage=2, seeds=[0, 1, 2], from_flair=["keepfit_v1"],
                                flair_init_steps=3)
    assert _parse(ablate_cli, command, ["--out", "o", "--seed", "3"]).seeds == [3]  # the single-seed spelling
    assert _parse(ablate_cli, command, ["--out", "o", "--from-flair"]).from_flair == []  # no method from the init
    for bad in (["--seeds", "1", "1"], ["--flair-init-steps", "-1"]):
        with pytest.raises(ValueError):
            ablate_cli.check_values(_parse(ablate_cli, command, ["--out", "o", *bad]))
    with pytest.raises(SystemExit):
        _parse(ablate_cli, Command(AblateConfig), ["--out", "o", "--methods", "clipp"])

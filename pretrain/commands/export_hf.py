"""`retina-pretrain export-hf CHECKPOINT OUT`: a DeepSpeed checkpoint as a transformers directory.

    retina-pretrain export-hf runs/demo_cpu exported/demo              # run dir, checkpoints dir or tag folder
    retina-pretrain export-hf runs/demo_cpu exported/demo --eval eval.json --overwrite
    retina-pretrain export-hf runs/demo_cpu exported/vision --vision_only   # timm folder (local-dir:...)
    retina-pretrain export-hf runs/demo_cpu exported/text --text_only       # HF BertModel folder + tokenizer

Here --config is the run's config.yaml (a field of this command); an options file is given with --options.
The argparse-era spellings still work (--vision-only, --text-only, --no-verify).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

PROG = "retina-pretrain export-hf"
REMOVED_HEADS = ("the caption decoder's head count is read from the run config (model.caption_decoder.num_heads), "
                 "so the flag is no longer needed; set it there if an old run config lacks it")


@dataclass
class ExportArgs:
    checkpoint: str
    """Run folder, its checkpoints/ folder (uses `latest`) or one checkpoint tag folder."""
    out: str
    """Output folder (must not exist unless --overwrite)."""
    config: str | None = None
    """The run's resolved config.yaml (default: found beside the checkpoint)."""
    eval_results: str | None = None
    """JSON of evaluation results (retina-pretrain eval's metrics.json) for the model card table; also --eval."""
    overwrite: bool = False
    """Replace an existing OUT (atomically): only an empty folder or a model folder, never a run or a shard set."""
    verify: bool = True
    """Compare the exported model's features with the training model's on random inputs."""
    vision_only: bool = False
    """Write a timm folder of the image tower only."""
    text_only: bool = False
    """Write a transformers folder of the text tower (with its tokenizer) only."""


COMMAND_ARGS = {"positional": ("checkpoint", "out"), "aliases": {"--eval": "eval_results"},
                "removed": {"caption_decoder_heads": REMOVED_HEADS}, "config_flag": "--options"}


def cli_main(argv: list[str]) -> int:
    from pretrain.checkpoint import CheckpointError
    from pretrain.hf import export
    from shards.commandline import Command, command_parser, parse_command
    from shards.output_paths import OutputPathError, check_output_dir

    parser = command_parser(Command(ExportArgs, **COMMAND_ARGS), prog=PROG, description=__doc__,
                            epilog=export.__doc__)
    _, args = parse_command(parser, argv)
    if args.vision_only and args.text_only:
        print(f"{PROG}: error: give at most one of --vision_only and --text_only", file=sys.stderr)
        return 2
    mode = "vision" if args.vision_only else "text" if args.text_only else "full"
    try:
        check_output_dir(args.out, "OUT")
    except OutputPathError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    try:
        out = export.export_hf(args.checkpoint, args.out, config=args.config, eval_results=args.eval_results,
                               overwrite=args.overwrite, verify=args.verify, mode=mode)
    except (CheckpointError, export.ExportError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    print(f"exported {args.checkpoint} -> {out}")
    return 0

"""`retina-pretrain import-hf DIR`: start training from an exported model, or split it for fine-tuning.

    retina-pretrain import-hf exported/demo --out runs/ft.yaml [--base pretrain/configs/demo_cpu.yaml]
    retina-pretrain train --config runs/ft.yaml --run.dir runs/ft
    retina-pretrain import-hf exported/demo --vision_only exported/demo-vision   # timm.create_model("local-dir:…")
    retina-pretrain import-hf exported/demo --text_only exported/demo-text       # AutoModel/AutoTokenizer

Give exactly one of --out, --vision_only, --text_only (--vision-only / --text-only work too).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

PROG = "retina-pretrain import-hf"


@dataclass
class ImportArgs:
    dir: str
    """A folder written by retina-pretrain export-hf."""
    out: str | None = None
    """Write a training config (YAML) here that builds the exported model and initialises it from DIR."""
    vision_only: str | None = None
    """Write a timm folder of the image tower here."""
    text_only: str | None = None
    """Write a transformers folder of the text tower (with its tokenizer) here."""
    base: str | None = None
    """Config whose other sections (run, data, engine, method) --out keeps (default: the defaults)."""
    overwrite: bool = False
    """Replace an existing output (a --vision_only/--text_only folder: only an empty or model folder)."""


def cli_main(argv: list[str]) -> int:
    from pretrain.hf import importer
    from pretrain.hf.export import ExportError
    from shards.commandline import Command, command_parser, parse_command
    from shards.output_paths import OutputPathError, check_output_dir, check_output_file

    parser = command_parser(Command(ImportArgs, positional=("dir",)), prog=PROG, description=__doc__,
                            epilog=importer.__doc__)
    _, args = parse_command(parser, argv)
    if sum(x is not None for x in (args.out, args.vision_only, args.text_only)) != 1:
        print(f"{PROG}: error: give exactly one of --out, --vision_only and --text_only", file=sys.stderr)
        return 2
    try:
        if args.out:
            check_output_file(args.out, "--out")
        else:
            check_output_dir(args.vision_only or args.text_only, "--vision_only" if args.vision_only else "--text_only")
    except OutputPathError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    try:
        if args.out:
            from pretrain.config import save_config

            out = Path(args.out)
            if out.exists() and not args.overwrite:
                raise importer.HFImportError(f"{str(out)!r} already exists (pass --overwrite to replace it)")
            save_config(importer.train_config_from_export(args.dir, args.base), out)
            print(f"wrote {out}: train with `retina-pretrain train --config {out}`")
        else:
            which = "vision" if args.vision_only else "text"
            out = importer.split_export(args.dir, args.vision_only or args.text_only, which, args.overwrite)
            print(f"wrote {out}")
    except (importer.HFImportError, ExportError, FileNotFoundError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    return 0

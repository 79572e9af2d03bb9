"""`retina-pretrain import-checkpoint --format flair|keepfit|vilref FILE --out DIR`: a released checkpoint as an export.

    retina-pretrain import-checkpoint --format flair flair_resnet.pth --out exported/flair
    retina-pretrain import-checkpoint --format keepfit keepfit.pth --out exported/keepfit --text ~/Bio_ClinicalBERT
    retina-pretrain import-checkpoint --format vilref ViLReF_ViT.pt --out exported/vilref --text ~/chinese-roberta
    retina-pretrain import-hf exported/flair --out runs/ft.yaml          # then train from it (model.init_from)

DIR is an export folder like export-hf's (config.json, model.safetensors, tokenizer, model card): model.init_from,
import-hf and AutoModel.from_pretrained(DIR, trust_remote_code=True) read it. Exit 1 when the file is refused
(pickled objects, keys or shapes that do not match: the error lists them) or DIR cannot be written; 2 for bad
options.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

PROG = "retina-pretrain import-checkpoint"


@dataclass
class ImportCheckpointArgs:
    file: str
    """The released state dict (.pth/.pt), read with torch.load(weights_only=True) only."""
    format: str = ""
    """Its layout: flair (jusiro/FLAIR FLAIRModel), keepfit (KeepFIT V1 KeepFITModel, MM-Retinal) or vilref
    (T6Yang/ViLReF, Chinese-CLIP; ViT checkpoints)."""
    out: str = ""
    """The export folder to write (must not exist unless --overwrite)."""
    text: str | None = None
    """The BERT the checkpoint was trained from: hub id (local cache or network) or folder with config.json and
    the tokenizer; the text tower's config and the tokenizer come from it (heads are not visible in weights).
    Default: emilyalsentzer/Bio_ClinicalBERT (flair, keepfit), hfl/chinese-roberta-wwm-ext (vilref)."""
    image_size: int | None = None
    """Input resolution for the config and preprocessor: default 512 for flair/keepfit; vilref's is read off its
    position embeddings."""
    overwrite: bool = False
    """Replace an existing OUT (atomically): only an empty folder or a model folder."""


def cli_main(argv: list[str]) -> int:
    from pretrain import released
    from pretrain.hf.export import ExportError
    from shards.commandline import Command, command_parser, parse_command

    parser = command_parser(Command(ImportCheckpointArgs, positional=("file",)), prog=PROG, description=__doc__,
                            epilog=released.__doc__)
    _, args = parse_command(parser, argv)
    if args.format not in released.FORMATS or not args.out or (args.image_size is not None and args.image_size < 1):
        print(f"{PROG}: error: give --format ({' or '.join(released.FORMATS)}), --out DIR and a positive "
              "--image_size", file=sys.stderr)
        return 2
    try:
        out = released.import_released(args.file, args.out, args.format, text=args.text,
                                       image_size=args.image_size, overwrite=args.overwrite)
    except (released.ReleasedCheckpointError, ExportError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    print(f"imported {args.file} ({args.format}) -> {out}")
    return 0

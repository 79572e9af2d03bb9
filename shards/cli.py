"""`retina-shards` (also `python -m shards`): synthesize data, build, verify, inspect and summarise shards."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from shards.images import DEFAULT_MAX_PIXELS, FORMATS
from shards.readers.table import SourceError


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="render a synthetic fundus dataset in the real on-disk layouts")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--public", type=int, default=600, help="public categorical images (FLAIR dataframes)")
    p.add_argument("--elite", type=int, default=200, help="elite image-caption pairs (MM-Retinal layout)")
    p.add_argument("--eval", type=int, default=200, help="images in the evaluation splits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=256, help="side of the rendered images in pixels")


def _add_render(sub) -> None:
    p = sub.add_parser("render", help="render stand-in pixels for an existing dataframe's image paths")
    p.add_argument("dataframe", type=Path, help="a FLAIR (,image,atributes,categories) or caption CSV")
    p.add_argument("--image-root", type=Path, required=True, help="where the rows' relative paths land")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="render only the first N rows")


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="build WebDataset shards from one or more sources")
    p.add_argument("--out", type=Path, required=True, help="shard set folder (index.json, *.tar)")
    p.add_argument("--source", action="append", required=True, metavar="KIND:PATH[:IMAGE_ROOT]",
                   help="flair | captions | mm-retinal | manifest; repeat for several sources")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--image-size", type=int, default=0,
                   help="resize onto a square canvas of this side, aspect kept (0 keeps the original)")
    p.add_argument("--format", dest="image_format", choices=FORMATS, default="jpg", help="image encoding")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="reject larger images as decompression bombs")
    p.add_argument("--split", default="train=100",
                   help="split rule for rows without their own split, by key hash: e.g. train=98,val=2")
    p.add_argument("--order", choices=("shuffle", "source"), default="shuffle",
                   help="sample order inside a split: seeded key-hash shuffle mixes datasets across shards")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")


def _add_readers(sub) -> None:
    p = sub.add_parser("verify", help="re-hash, decode every sample, reconcile counts; exit 1 on any problem")
    p.add_argument("dir", type=Path)
    p = sub.add_parser("inspect", help="print samples")
    p.add_argument("dir", type=Path)
    p.add_argument("-n", "--num", type=int, default=5, help="how many samples")
    p.add_argument("--split", default=None)
    p = sub.add_parser("stats", help="counts by dataset, modality, split and category")
    p.add_argument("dir", type=Path)
    p.add_argument("--plot", type=Path, default=None, help="write bar charts to this PNG")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retina-shards", description=__doc__)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_synth, _add_render, _add_build, _add_readers):
        add(sub)
    return p


def run(args: argparse.Namespace) -> int:
    progress = not args.quiet
    if args.command == "synth":
        from shards.synth import synthesize

        summary = synthesize(args.out, public=args.public, elite=args.elite, eval=args.eval, seed=args.seed,
                             image_size=args.image_size, progress=progress)
        print(json.dumps(summary, indent=1))
    elif args.command == "render":
        from shards.synth import render_for_dataframe

        count = render_for_dataframe(args.dataframe, args.image_root, seed=args.seed,
                                     image_size=args.image_size, limit=args.limit)
        print(f"rendered {count} images under {args.image_root}")
    elif args.command == "build":
        from shards.build import BuildConfig, build

        cfg = BuildConfig(out=args.out, sources=args.source, shard_size=args.shard_size,
                          image_size=args.image_size, image_format=args.image_format, max_pixels=args.max_pixels,
                          split=args.split, order=args.order, seed=args.seed, workers=args.workers,
                          progress=progress)
        t = build(cfg)["totals"]
        print(f"{args.out}: rows read {t['rows_read']} = written {t['written']} + rejected {t['rejected']} "
              f"+ duplicates {t['duplicates']}")
    elif args.command == "verify":
        from shards.verify import verify

        problems = verify(args.dir, progress=progress)
        for problem in problems:
            print(problem)
        print(f"{args.dir}: {'FAILED, ' + str(len(problems)) + ' problem(s)' if problems else 'OK'}")
        return 1 if problems else 0
    elif args.command == "inspect":
        from shards.summary import describe, iter_samples

        for number, (shard, sample) in enumerate(iter_samples(args.dir, args.split)):
            if number >= args.num:
                break
            print(describe(shard, sample))
    elif args.command == "stats":
        from shards.summary import compute_stats, format_stats, plot_stats

        stats = compute_stats(args.dir)
        print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
        if args.plot:
            plot_stats(stats, args.plot)
            print(f"plot written to {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return run(args)
    except (SourceError, ValueError, FileNotFoundError) as exc:
        print(f"retina-shards {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

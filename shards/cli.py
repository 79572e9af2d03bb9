"""`retina-shards` (also `python -m shards`): synthesize data, build, verify, inspect and summarise shards.

Each command's options are a dataclass below (field docstrings are the help; shards.commandline): `--help`
after a command lists them, `--config FILE` reads them from YAML and `--print_config` prints them. The
argparse-era spellings keep working: `--image-size 64` for `--image_size 64`, `--source A --source B`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shards.commandline import Command, parse_command, subcommand_parser
from shards.images import DEFAULT_MAX_PIXELS
from shards.readers.table import SourceError
from shards.storage import is_url

if TYPE_CHECKING:
    from shards.remote_read import LocalCopy

__all__ = ["BuildArgs", "COMMANDS", "build_config", "main", "parser", "run"]


@dataclass
class SynthArgs:
    out: Path
    """Output folder."""
    public: int = 600
    """Public categorical images (FLAIR dataframes)."""
    elite: int = 200
    """Elite image-caption pairs (MM-Retinal layout)."""
    eval: int = 200
    """Images in the evaluation splits."""
    seed: int = 0
    """Seed of the synthetic images and labels."""
    image_size: int = 256
    """Side of the rendered images in pixels."""


@dataclass
class RenderArgs:
    dataframe: Path
    """A FLAIR (,image,atributes,categories) or caption CSV."""
    image_root: Path
    """Where the rows' relative paths land."""
    seed: int = 0
    """Seed of the rendered pixels."""
    image_size: int = 256
    """Side of the rendered images in pixels."""
    limit: int | None = None
    """Render only the first N rows."""


@dataclass
class BuildArgs:
    out: str
    """Shard set folder (index.json, *.tar), or s3://bucket/prefix (credentials and AWS_ENDPOINT_URL: README)."""
    source: list[str]
    """KIND:PATH[:IMAGE_ROOT] with KIND flair | captions | mm-retinal | manifest; repeat for several sources."""
    shard_size: int = 1000
    """Samples per shard."""
    image_size: int = 0
    """Resize onto a square canvas of this side, aspect kept (0 keeps the original)."""
    format: Literal["jpg", "png"] = "jpg"
    """Image encoding."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Reject larger images as decompression bombs."""
    split: str = "train=100"
    """Split rule for rows without their own split, by key hash: e.g. train=98,val=2."""
    order: Literal["shuffle", "source"] = "shuffle"
    """Sample order inside a split: a seeded key-hash shuffle mixes datasets across shards; source keeps it."""
    seed: int = 0
    """Seed of the shuffle and the split hash."""
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """Worker processes (the output is byte-identical whatever the number)."""


@dataclass
class DirArgs:
    dir: str
    """Shard set folder, or s3://bucket/prefix."""


@dataclass
class InspectArgs(DirArgs):
    num: int = 5
    """How many samples to print (also -n)."""
    split: str | None = None
    """Only samples of this split."""


@dataclass
class StatsArgs(DirArgs):
    plot: Path | None = None
    """Write bar charts to this PNG."""
    json: bool = False
    """Print the statistics as JSON."""


COMMANDS: dict[str, Command] = {
    "synth": Command(SynthArgs, "render a synthetic fundus dataset in the real on-disk layouts"),
    "render": Command(RenderArgs, "render stand-in pixels for an existing dataframe's image paths",
                      positional=("dataframe",)),
    "build": Command(BuildArgs, "build WebDataset shards from one or more sources"),
    "verify": Command(DirArgs, "re-hash, decode every sample, reconcile counts; exit 1 on any problem",
                      positional=("dir",)),
    "inspect": Command(InspectArgs, "print samples", positional=("dir",), aliases={"-n": "num"}),
    "stats": Command(StatsArgs, "counts by dataset, modality, split and category", positional=("dir",)),
}


def parser():
    p = subcommand_parser(COMMANDS, prog="retina-shards", description=__doc__)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    return p


def build_config(args: BuildArgs, progress: bool) -> Any:
    """The shards.build.BuildConfig of `build` options (shared with `retina-cluster shards`)."""
    from shards.build import BuildConfig

    from shards.storage import local_or_url

    return BuildConfig(out=local_or_url(args.out), sources=list(args.source), shard_size=args.shard_size,
                       image_size=args.image_size, image_format=args.format, max_pixels=args.max_pixels,
                       split=args.split, order=args.order, seed=args.seed, workers=args.workers, progress=progress)


def build_summary(out: str | Path, totals: dict[str, int]) -> str:
    return (f"{out}: rows read {totals['rows_read']} = written {totals['written']} + rejected {totals['rejected']} "
            f"+ duplicates {totals['duplicates']}")


# command -> (field, flag, is a folder) of what it writes: checked before any work (shards.output_paths)
OUTPUTS = {"synth": ("out", "--out", True), "render": ("image_root", "--image_root", True),
           "build": ("out", "--out", True), "stats": ("plot", "--plot", False)}


def check_outputs(command: str, args: Any) -> None:
    from shards.output_paths import check_output_dir, check_output_file

    name, flag, folder = OUTPUTS.get(command, (None, "", True))
    if name is not None and (path := getattr(args, name)) is not None:
        (check_output_dir if folder else check_output_file)(path, flag)


def run(command: str, args: Any, progress: bool) -> int:
    check_outputs(command, args)
    if command == "synth":
        from shards.synth import synthesize

        summary = synthesize(args.out, public=args.public, elite=args.elite, eval=args.eval, seed=args.seed,
                             image_size=args.image_size, progress=progress)
        print(json.dumps(summary, indent=1))
    elif command == "render":
        from shards.synth import render_for_dataframe

        count = render_for_dataframe(args.dataframe, args.image_root, seed=args.seed,
                                     image_size=args.image_size, limit=args.limit)
        print(f"rendered {count} images under {args.image_root}")
    elif command == "build":
        from shards.build import build
        from shards.remote_build import build_remote

        cfg = build_config(args, progress)
        print(build_summary(args.out, (build_remote if is_url(cfg.out) else build)(cfg)["totals"]))
    elif command in ("verify", "inspect", "stats"):
        from shards.remote_read import local_copy

        with local_copy(args.dir) as copy:  # a remote set is read from a temporary copy
            return read_command(command, args, copy, progress)
    return 0


def read_command(command: str, args: Any, copy: LocalCopy, progress: bool) -> int:
    """verify, inspect or stats on the folder copy.folder; messages name copy.shown."""
    if command == "verify":
        from shards.verify import verify

        problems = [copy.name(p) for p in verify(copy.folder, progress=progress)]
        for problem in problems:
            print(problem)
        print(f"{copy.shown}: {'FAILED, ' + str(len(problems)) + ' problem(s)' if problems else 'OK'}")
        return 1 if problems else 0
    if command == "inspect":
        return inspect_samples(args, copy)
    from shards.summary import compute_stats, format_stats, plot_stats

    stats = compute_stats(copy.folder)
    stats["problems"] = [copy.name(p) for p in stats["problems"]]
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    if args.plot:
        plot_stats(stats, args.plot)
        print(f"plot written to {args.plot}")
    return report_problems(command, copy.shown, stats["problems"], f"counted {stats['samples']} readable sample(s)")


def inspect_samples(args: InspectArgs, copy: LocalCopy) -> int:
    """Print up to --num samples; a damaged shard or sample is reported and skipped (exit 1)."""
    from shards.summary import SampleError, describe, iter_samples

    problems: list[str] = []
    shown = 0
    for shard, sample in iter_samples(copy.folder, args.split, problems):
        if shown >= args.num:
            break
        try:
            print(describe(shard, sample, path=copy.folder / shard))
            shown += 1
        except SampleError as exc:
            problems.append(str(exc))
    return report_problems("inspect", copy.shown, [copy.name(p) for p in problems],
                           f"showed {shown} readable sample(s)")


def report_problems(command: str, folder: str | Path, problems: list[str], done: str) -> int:
    """One stderr line per problem, then one line saying what could still be read; 1 if there were any."""
    for problem in problems:
        print(f"retina-shards {command}: {problem}", file=sys.stderr)
    if problems:
        print(f"retina-shards {command}: error: {len(problems)} problem(s) in {folder}; {done}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet = any(a in ("-q", "--quiet") for a in argv[:next((i for i, a in enumerate(argv) if a in COMMANDS), 0)])
    command, args = parse_command(parser(), argv)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return run(command, args, progress=not quiet)
    except (SourceError, ValueError, FileNotFoundError) as exc:  # StorageError is a ValueError
        print(f"retina-shards {command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Do the wheels of benchmarks/gpu_wheels.sh cover `retina-pretrain train`, `eval` and `export-hf` on a stock CUDA
PyTorch image? Checked on this machine's CPU, before a GPU session finds out: an interpreter that sees only

  - a stock image's packages: torch, triton, numpy, pyyaml, transformers, timm and their requirements, linked
    from this environment (no site-packages of its own), and
  - the wheels gpu_wheels.sh makes for this Python version, of which only those the stock packages lack are
    installed (benchmarks/missing_wheels.py, as gpu_session.sh does),

runs benchmarks/train_e2e.py --smoke (shards, train under DeepSpeed, the plain loop, eval, export) with the
carried MiniLM tokenizer. A package missing from the wheel list fails it with the ImportError that names it.
Needs the package index (gpu_wheels.sh downloads); takes a few minutes on 2 cores.

    python benchmarks/gpu_wheels_check.py [--work DIR] [--config pretrain/configs/gpu_flair_rn50_512.yaml]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STOCK = ("torch", "triton", "numpy", "pyyaml", "transformers", "timm")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def link_stock_packages(out: Path) -> list[str]:
    """Symlink the top-level modules and metadata of STOCK and their requirements (no extras) into `out`."""
    from packaging.requirements import Requirement

    out.mkdir(parents=True, exist_ok=True)
    todo, seen = list(STOCK), set()
    while todo:
        name = _normal(todo.pop())
        if name in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a platform-conditional requirement not installed here
        seen.add(name)
        todo += [r.name for r in map(Requirement, dist.requires or [])
                 if r.marker is None or r.marker.evaluate({"extra": ""})]
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            source, target = Path(dist.locate_file(top)), out / top
            if source.exists() and not target.exists() and not top.endswith(".pth"):
                target.symlink_to(source)
    return sorted(seen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--config", default="pretrain/configs/gpu_flair_rn50_512.yaml")
    args = parser.parse_args(argv)
    work = (args.work or Path(tempfile.mkdtemp(prefix="gpu-wheels-check-"))).resolve()
    wheels, stock, site, venv = work / "wheels", work / "stock", work / "site", work / "venv"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"

    run = lambda cmd, **kw: subprocess.run(cmd, check=True, cwd=REPO, **kw)  # noqa: E731
    run(["bash", "benchmarks/gpu_wheels.sh", str(wheels)],
        env=dict(os.environ, PYTHON=sys.executable, PY_VERSION=version), stdout=subprocess.DEVNULL)
    print("stock packages:", " ".join(link_stock_packages(stock)))
    # a venv sees no site-packages but its own; the .pth puts the stock packages first, then the installed wheels
    run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)])
    python = str(venv / "bin" / "python")
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  capture_output=True, text=True).stdout.strip()
    Path(purelib, "stock.pth").write_text(f"{stock}\n{site}\n")
    missing = run([python, "benchmarks/missing_wheels.py", *map(str, sorted(wheels.glob("*.whl")))],
                  capture_output=True, text=True).stdout.split()
    print("installing:", " ".join(Path(m).name.split("-")[0] for m in missing))
    run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target",
         str(site), *missing])
    env = dict(os.environ, PYTHONPATH=str(REPO))  # the repository itself, as gpu_session.sh adds it
    e2e = work / "e2e"
    run([python, "benchmarks/train_e2e.py", "shards", "--work", str(e2e), "--smoke", "--workers", "1"], env=env)
    run([python, "benchmarks/train_e2e.py", "run", "--config", args.config, "--work", str(e2e), "--smoke",
         "--steps", "4", "--text", str(wheels / "minilm-tokenizer"), "--out", str(work / "train_e2e.json")], env=env)
    print(f"the wheels cover train, eval and export: {work / 'train_e2e.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Zero-shot classification from an exported model directory with stock transformers only (no retinascale
import): the last step of `make demo`, and what a researcher downloading the export would run.

    python scripts/zero_shot_from_export.py EXPORT_DIR DATAFRAME.csv IMAGE_ROOT [-n 20]

DATAFRAME is a FLAIR-format evaluation table (`,image,atributes,categories`); its distinct first categories
are the candidate labels. Prints each prediction and the accuracy over the first n rows.
"""

from __future__ import annotations

import argparse
import ast
import csv
import sys
from pathlib import Path

from PIL import Image
from transformers import pipeline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("dataframe", type=Path)
    parser.add_argument("image_root", type=Path)
    parser.add_argument("-n", type=int, default=20, help="rows to classify (default 20)")
    args = parser.parse_args()
    with args.dataframe.open(newline="", encoding="utf-8") as f:
        rows = [(r["image"], ast.literal_eval(r["categories"])[0]) for r in csv.DictReader(f)]
    labels = sorted({category for _, category in rows})
    classify = pipeline("zero-shot-image-classification", model=str(args.export_dir), trust_remote_code=True)
    correct = 0
    for path, truth in rows[: args.n]:
        with Image.open(args.image_root / path) as img:
            best = classify(img.convert("RGB"), candidate_labels=labels)[0]
        correct += best["label"] == truth
        print(f"{path:<40} true: {truth:<36} predicted: {best['label']:<36} {best['score']:.2f}")
    n = min(args.n, len(rows))
    print(f"zero-shot from {args.export_dir}: {correct}/{n} correct ({correct / n:.0%}), {len(labels)} classes "
          f"(chance {1 / len(labels):.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Lay Magnetic Tile Defects out as an MVTec AD category, with the same split.

flowkit's ``mtd`` dataset splits the defect-free images with a seed (80 % train); this writes
the same images, unchanged, as one MVTec AD category::

    OUT/<category>/train/good/<stem>.jpg          the training part of MT_Free
    OUT/<category>/test/good/<stem>.jpg           the rest of MT_Free
    OUT/<category>/test/<type>/<stem>.jpg         every defective image, by type
    OUT/<category>/ground_truth/<type>/<stem>_mask.png   its mask (the PNG beside it)

so that ``flowkit bench --suite defects --dataset mvtec:category=<category> --data-root OUT``
runs on the images ``--dataset mtd`` runs on (issue 38: the two must agree within 0.03).

    python benchmarks/mtd_as_mvtec.py ../shared/data/mtd-dev /tmp/mtd-mvtec --category tiles
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import flowkit


def convert(root: Path, out: Path, category: str = "tiles", seed: int = 0) -> Path:
    """Write ``root`` (native layout) as ``out/category`` (MVTec AD layout); returns it."""
    data = flowkit.load_dataset("mtd", root=root, image_size=8, seed=seed)  # paths and split
    base = out / category
    for path, kind, test in zip(
        data.paths or [], data.defect_types or [], data.is_test.tolist(), strict=True
    ):
        src = Path(path)
        part = "train" if not test else "test"
        dest = base / part / kind / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        if kind != "good":
            mask = base / "ground_truth" / kind / f"{src.stem}_mask.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.with_suffix(".png"), mask)
    return base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("root", type=Path, help="Magnetic Tile Defects in its native layout")
    ap.add_argument("out", type=Path, help="where the MVTec AD category is written")
    ap.add_argument("--category", default="tiles")
    ap.add_argument("--seed", type=int, default=0, help="the mtd split's seed")
    args = ap.parse_args()
    print(f"wrote {convert(args.root, args.out, args.category, args.seed)}")


if __name__ == "__main__":
    main()

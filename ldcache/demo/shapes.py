"""The embedded default dataset: a small COCO-format detection set drawn offline by kwcoco.

kwcoco's toy generator paints stars, "eff" glyphs and superstars on textured backgrounds with
exact boxes. Half the images are landscape and half square, so that batches need padding the way
COCO batches do.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..paths import ldcache_home

CLASSES = ("star", "eff", "superstar")
FORMAT = 2  # bump when what is written here changes, so cached copies are rebuilt


@dataclass(frozen=True)
class ShapesSpec:
    num_train: int = 48
    num_val: int = 16
    seed: int = 0
    # A held-out split drawn with its own seed, for results that no choice was made on.
    num_test: int = 0
    test_seed: int = 1000
    # (width, height) of the two image shapes; images alternate between them.
    sizes: tuple[tuple[int, int], ...] = ((320, 320), (320, 256))

    def digest(self) -> str:
        text = json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_shapes_root(spec: ShapesSpec) -> Path:
    return ldcache_home() / "datasets" / f"shapes-{spec.digest()}"


def ensure_shapes_dataset(spec: ShapesSpec = ShapesSpec(), root: Path | None = None) -> Path:
    """Return the root of the dataset described by `spec`, generating it first if needed.

    Layout: images/{train,val,test}/*.png, annotations/instances_{train,val,test}.json (test only
    when ``spec.num_test``). A `COMPLETE` file holding the spec digest is written last, so an
    interrupted build is redone, not reused.
    """
    root = Path(root) if root is not None else default_shapes_root(spec)
    marker = root / "COMPLETE"
    if marker.exists() and marker.read_text().strip() == spec.digest():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the destination and rename: concurrent builders never see a half-written set.
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
    try:
        _write_dataset(spec, staging)
        (staging / "COMPLETE").write_text(spec.digest())
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    except OSError:
        if root.exists() and (root / "COMPLETE").exists():
            shutil.rmtree(staging, ignore_errors=True)
            return root  # another process finished the same build first
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root


def dataset_sha256(root: Path) -> str:
    """sha256 of a dataset's annotation files and images (names and bytes): what results from it
    are keyed by, so that runs on different data are never compared."""
    digest = hashlib.sha256()
    for path in sorted(p for folder in ("annotations", "images") for p in (Path(root) / folder).rglob("*")
                       if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _write_dataset(spec: ShapesSpec, out: Path) -> None:
    ordered = _interleaved_images(spec.sizes, spec.num_train + spec.num_val, spec.seed, out / "kwcoco")
    splits = {"train": ordered[: spec.num_train], "val": ordered[spec.num_train:]}
    if spec.num_test:
        splits["test"] = _interleaved_images(spec.sizes, spec.num_test, spec.test_seed, out / "kwcoco" / "test")
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    for split, items in splits.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id, (src, width, height, boxes) in enumerate(items, start=1):
            file_name = f"{split}_{image_id:05d}.png"
            shutil.copyfile(src, out / "images" / split / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            for (x, y, w, h), label in boxes:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                })
        (out / "annotations").mkdir(exist_ok=True)
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    shutil.rmtree(out / "kwcoco")


def _interleaved_images(sizes: tuple[tuple[int, int], ...], count: int, seed: int, bundle: Path) -> list:
    """`count` drawn images, the sizes taking turns, so that any leading slice holds all sizes."""
    per_size = [len(range(i, count, len(sizes))) for i in range(len(sizes))]
    drawn = [_draw_images(size, n, seed + k, bundle / str(k)) for k, (size, n) in enumerate(zip(sizes, per_size))]
    return [drawn[i % len(drawn)][i // len(drawn)] for i in range(count)]


def _draw_images(size: tuple[int, int], count: int, seed: int, bundle: Path):
    """Draw `count` images with kwcoco; return (png path, width, height, [(xywh, label)]) each."""
    import numpy as np
    from kwcoco.demo.toydata_image import demodata_toy_dset

    # kwcoco draws each shape's category from numpy's global random state, not from `rng` (its
    # CategoryPatterns is made without it): seeded here, and given back as it was, so that a
    # spec draws the same dataset in every process.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        dset = demodata_toy_dset(image_size=size, n_imgs=count, rng=seed, bundle_dpath=str(bundle),
                                 use_cache=False, verbose=0)
    finally:
        np.random.set_state(state)
    label_of = {cat["id"]: CLASSES.index(cat["name"]) + 1
                for cat in dset.cats.values() if cat["name"] in CLASSES}
    items = []
    for gid in sorted(dset.imgs):
        img = dset.imgs[gid]
        boxes = [([float(v) for v in ann["bbox"]], label_of[ann["category_id"]])
                 for ann in dset.annots(gid=gid).objs if ann["category_id"] in label_of]
        items.append((dset.get_image_fpath(gid), img["width"], img["height"], boxes))
    return items

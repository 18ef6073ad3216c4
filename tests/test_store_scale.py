"""What a store costs as it grows: objects in the store, objects fetched to open a reader, requests
per record. Two real dumps, one four times the other's image-views, at the default block size's
ratio of records to objects (a block of 32 image-views here, 64 by default)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import dump_args, run_dump_cli
from ldcache.store.reader import StoreReader

pytestmark = pytest.mark.slow

BLOCK = 32


def _repeated_dataset(shapes_root: Path, tmp_path: Path, images: int) -> Path:
    """An annotation file of `images` image ids cycling over the shapes train images (the same file
    under several ids, as COCO allows), with their boxes."""
    ann = json.loads((shapes_root / "annotations/instances_train.json").read_text())
    originals, boxes = ann["images"], {}
    for box in ann["annotations"]:
        boxes.setdefault(box["image_id"], []).append(box)
    ann["images"], ann["annotations"] = [], []
    for k in range(images):
        image = dict(originals[k % len(originals)], id=k + 1)
        ann["images"].append(image)
        for box in boxes.get(originals[k % len(originals)]["id"], []):
            ann["annotations"].append(dict(box, id=len(ann["annotations"]) + 1, image_id=k + 1))
    path = tmp_path / f"ann-{images}.json"
    path.write_text(json.dumps(ann))
    return path


def _dump(shapes_root, teacher, tmp_path, image_views: int) -> Path:
    out = tmp_path / f"store-{image_views}.zarr"
    args = dump_args(shapes_root, teacher, out, "--block-size", str(BLOCK), "--scale", "128x128")
    args[args.index("--ann-file") + 1] = str(_repeated_dataset(shapes_root, tmp_path, image_views // 2))
    result = run_dump_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _objects(store: Path) -> tuple[int, int]:
    """(objects in the store, of them the shards of `masks` and `logits`)."""
    files = [p for p in store.rglob("*") if p.is_file()]
    shards = [p for p in files if p.relative_to(store).parts[0] in ("masks", "logits")
              and p.relative_to(store).parts[1] == "c"]
    return len(files), len(shards)


OPEN_AND_READ = """
import sys
store = sys.argv[1]
opened = set()
sys.addaudithook(lambda event, args: event == "open" and isinstance(args[0], str) and args[0].startswith(store)
                 and opened.add(args[0]))
from ldcache.store.reader import StoreReader
reader = StoreReader(store)
at_open = len(opened)
before = reader.fetcher.requests
for record in range(0, reader.num_records, 7):
    reader.read_record(record)
reads = len(range(0, reader.num_records, 7))
print(at_open, (reader.fetcher.requests - before) / reads)
"""


def _open_and_read(store: Path, home: Path) -> tuple[int, float]:
    """(objects of the store opened to open a reader, fetch requests per record read) in a new process."""
    env = {**os.environ, "LDCACHE_HOME": str(home)}
    result = subprocess.run([sys.executable, "-c", OPEN_AND_READ, str(store)], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    opened, per_record = result.stdout.split()
    return int(opened), float(per_record)


def test_objects_opening_and_requests_do_not_grow_with_the_store(shapes_root, random_teacher, tmp_path):
    small = _dump(shapes_root, random_teacher, tmp_path, 64)
    large = _dump(shapes_root, random_teacher, tmp_path, 256)
    (small_objects, small_shards), (large_objects, large_shards) = _objects(small), _objects(large)
    constant = small_objects - small_shards
    assert large_objects - large_shards == constant, "the same objects besides the shards"
    assert small_shards == 2 * 64 // BLOCK and large_shards == 2 * 256 // BLOCK, "one shard per block and array"
    for image_views, objects in ((64, small_objects), (256, large_objects)):
        assert objects <= image_views / 16 + constant

    first = [_open_and_read(store, tmp_path / "home") for store in (small, large)]
    again = [_open_and_read(store, tmp_path / "home") for store in (small, large)]  # tables already local
    assert first[0][0] == first[1][0] and again[0][0] == again[1][0], (first, again)
    assert again[0][0] < first[0][0], "a second open on the machine maps the tables it wrote"
    assert all(per_record == 1.0 for _, per_record in first + again)
    reader = StoreReader(large)
    assert reader.num_records == 256 and reader.blocks.num_blocks == 256 // BLOCK

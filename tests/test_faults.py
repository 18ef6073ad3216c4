"""Fault injection: damaged, lost and edited store objects, and bad inputs. Each fault ends in a
one-line error that names it (no traceback) or in a repair, never in silently wrong values.
Kills during pass 1 and pass 2 are in test_dump.py (LDCACHE_KILL_AT)."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from conftest import BIN, dump_args, run_dump_cli
from ldcache.errors import StoreCorruptError
from ldcache.store.reader import StoreReader
from test_dump import _arrays, _assert_same_arrays, _edited_dataset

LDCACHE = str(BIN / "ldcache")


def _ldcache(*args) -> subprocess.CompletedProcess:
    return subprocess.run([LDCACHE, *map(str, args)], capture_output=True, text=True, env=dict(os.environ))


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error a command printed, checked to be ldcache's own: exit 2, no traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "error:" in result.stderr, result.stderr[-2000:]
    return " ".join(result.stderr.split())  # rich wraps lines at the terminal's width


@pytest.fixture
def store_copy(shapes_store, tmp_path):
    out = tmp_path / "teacher.zarr"
    shutil.copytree(shapes_store, out)
    return out


def _shard_file(store, array: str, block: int):
    """The shard object holding a block's rows of `masks` or `logits`, and the shard's number."""
    shard = StoreReader(store).blocks.shard(block)
    return store / array / "c" / str(shard) / "0", shard


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _flip_byte(path, at: int | None = None):
    """Flip a bit of a byte: the middle one, or the one at `at`."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x10
    path.write_bytes(bytes(data))


def _image_of_block(store, block: int) -> int:
    reader = StoreReader(store)
    return int(reader.image_ids[reader.blocks.records(block).start // reader.num_views])


def _verify(store) -> tuple[int, dict]:
    result = _ldcache("verify", store, "--json")
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout)


def test_verify_says_ok_on_an_intact_store(shapes_store):
    code, report = _verify(shapes_store)
    reader = StoreReader(shapes_store)
    row_chunks = sum(len(reader.blocks.chunks(b)) for b in range(reader.blocks.num_blocks))
    assert code == 0 and report["ok"] and report["status"] == "complete"
    assert report["damaged_blocks"] == [] and report["layout_problems"] == []
    assert report["chunks_checked"] == 2 * row_chunks + 11  # inner chunks of both arrays, one-object arrays
    text = _ldcache("verify", shapes_store)
    assert text.returncode == 0 and ": OK (" in text.stdout


@pytest.mark.parametrize("fault", ["truncated", "flipped byte", "deleted"])
@pytest.mark.parametrize("array", ["logits", "masks"])
def test_a_damaged_row_chunk_is_named_by_every_reader(store_copy, fault, array):
    block = 3
    path, shard = _shard_file(store_copy, array, block)
    # Each fault hits the shard's first inner chunk, which holds the rows of the block's first record.
    {"truncated": _truncate, "flipped byte": lambda p: _flip_byte(p, at=20), "deleted": os.remove}[fault](path)
    image = _image_of_block(store_copy, block)
    # A truncated shard ends before its chunk, a flipped byte fails the chunk's CRC32C.
    chunk = f"c/{shard}/0" if fault == "deleted" else f"c/{shard}/0 inner chunk 0"
    problem = {"truncated": "truncated", "flipped byte": "checksum mismatch",
               "deleted": "the shard object is missing"}[fault]

    said = _one_line_error(_ldcache("inspect", store_copy, "--image", image, "--json"))
    assert f"array '{array}', chunk {chunk}" in said and f"(block {block}: records 12-15" in said, said
    assert "is damaged" in said and "--resume" in said and "ldcache dump-teacher" in said
    assert problem in said

    reader = StoreReader(store_copy)  # as training reads: the error, not zeros or garbage
    with pytest.raises(StoreCorruptError, match=f"chunk c/{shard}/0"):
        reader.read_record(reader.blocks.records(block).start)
    assert reader.read_record(0).levels(), "the other blocks stay readable"
    stats = _one_line_error(_ldcache("inspect", store_copy, "--stats", "--json"))  # a full pass too
    assert f"array '{array}', chunk c/{shard}/0" in stats and f"(block {block}" in stats and problem in stats

    code, report = _verify(store_copy)
    assert code == 1 and not report["ok"]
    assert [(b["block"], [c["array"] for c in b["chunks"]]) for b in report["damaged_blocks"]] == [(block, [array])]
    assert report["damaged_blocks"][0]["records"] == [12, 15] and problem in report["damaged_blocks"][0]["chunks"][0]["problem"]


def test_a_damaged_shard_index_copy_is_named(store_copy):
    _flip_byte(store_copy / "shard_index" / "c" / "0" / "0" / "0" / "0")
    said = _one_line_error(_ldcache("inspect", store_copy, "--json"))
    assert "array 'shard_index', chunk c/0/0/0/0" in said and "checksum mismatch" in said, said
    code, report = _verify(store_copy)
    assert code == 1 and [a["array"] for a in report["damaged_arrays"]] == ["shard_index"]
    assert not report["damaged_blocks"], "each shard's own index is intact"


def test_a_damaged_per_image_array_is_named(store_copy):
    _flip_byte(store_copy / "img_shape" / "c" / "0" / "0")
    said = _one_line_error(_ldcache("inspect", store_copy, "--json"))
    assert "array 'img_shape', chunk c/0/0" in said and "checksum mismatch" in said, said
    code, report = _verify(store_copy)
    assert code == 1 and report["damaged_arrays"][0]["array"] == "img_shape" and not report["damaged_blocks"]


@pytest.mark.parametrize("target,edit,message", [
    ("zarr.json", lambda meta: meta["attributes"]["layout"].update(chunk_rows="many"), "'layout.chunk_rows'"),
    ("logits/zarr.json", lambda meta: meta.update(shape=[meta["shape"][0], 7]), "array 'logits' has shape"),
    ("masks/zarr.json", lambda meta: meta["codecs"][0]["configuration"].update(chunk_shape=[256, 78]),
     "array 'masks' has chunks [256, 78]"),
    ("block_stats/zarr.json", lambda meta: meta.update(data_type="no-such-type"),
     "array 'block_stats' cannot be opened"),
])
def test_a_zarr_json_with_a_wrong_field_is_refused_naming_it(store_copy, target, edit, message):
    path = store_copy / target
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    said = _one_line_error(_ldcache("inspect", store_copy, "--json"))
    assert message in said, said
    result = _ldcache("verify", store_copy)
    if target == "zarr.json":  # the attributes themselves: not a store of this format
        assert message in _one_line_error(result)
    else:
        assert result.returncode == 1 and message in " ".join(result.stdout.split()), result.stdout[-2000:]


def test_verify_reports_an_unfinished_store_as_such(store_copy):
    import zarr

    zarr.open_group(str(store_copy), mode="r+").attrs["status"] = "masks-written"
    code, report = _verify(store_copy)
    assert code == 1 and report["status"] == "masks-written" and not report["ok"]
    text = _ldcache("verify", store_copy)
    assert text.returncode == 1 and "UNFINISHED" in text.stdout and "--resume" in " ".join(text.stdout.split())


def test_verify_of_no_store_is_a_user_error(tmp_path):
    assert "does not exist" in _one_line_error(_ldcache("verify", tmp_path / "nothing.zarr"))


@pytest.mark.slow
def test_resume_repairs_exactly_the_damaged_blocks_to_an_undamaged_dumps_arrays(store_copy, shapes_store,
                                                                                 shapes_root, random_teacher):
    logits_file, _ = _shard_file(store_copy, "logits", 2)
    masks_file, _ = _shard_file(store_copy, "masks", 9)
    _truncate(logits_file)
    _flip_byte(masks_file)
    _flip_byte(store_copy / "shard_index" / "c" / "0" / "0" / "0" / "0")
    code, report = _verify(store_copy)
    assert code == 1
    assert [(b["block"], [c["array"] for c in b["chunks"]]) for b in report["damaged_blocks"]] == \
        [(2, ["logits"]), (9, ["masks"])]
    assert [a["array"] for a in report["damaged_arrays"]] == ["shard_index"]
    text = _ldcache("verify", store_copy)
    assert text.returncode == 1 and "3 damaged chunk(s) in 2 block(s) of 24" in " ".join(text.stdout.split())

    resumed = run_dump_cli(dump_args(shapes_root, random_teacher, store_copy, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = " ".join(resumed.stderr.split())
    assert "repairing 2 damaged block(s) (2, 9) and 1 damaged one-object array(s)" in said, said[-2000:]
    assert _verify(store_copy)[0] == 0
    repaired, reference = _arrays(store_copy), _arrays(shapes_store)
    _assert_same_arrays(repaired, reference)
    assert np.array_equal(StoreReader(store_copy).arrays.read("block_stats"),
                          StoreReader(shapes_store).arrays.read("block_stats"))


def test_bad_images_and_boxes_are_all_listed_before_pass_1(shapes_root, random_teacher, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(shapes_root / "images/train", images)
    (images / "text.jpg").write_text("this is not a JPEG")
    listed = {}

    def spoil(ann):
        first, second, third = ann["images"][:3]
        first["file_name"] = "text.jpg"
        second["width"] += 3
        box = next(a for a in ann["annotations"] if a["image_id"] == third["id"])
        box["bbox"][0] = float("nan")
        listed.update(first=first["id"], second=(second["id"], second["file_name"], second["width"]),
                      third=(third["id"], third["file_name"], box["id"]))

    ann = _edited_dataset(shapes_root, tmp_path, spoil)
    args = dump_args(shapes_root, random_teacher, tmp_path / "s")
    args[args.index("--ann-file") + 1], args[args.index("--img-dir") + 1] = str(ann), str(images)
    result = run_dump_cli(args)
    said = _one_line_error(result)
    assert said.count(", image id ") == 3 and "3 problem(s)" in said, said
    assert f"text.jpg, image id {listed['first']}: the file cannot be read as an image" in said
    image_id, name, width = listed["second"]
    assert f"{name}, image id {image_id}: the file is {width - 3}x" in said and f"annotation says {width}x" in said
    image_id, name, box = listed["third"]
    assert f"{name}, image id {image_id}: annotation {box} has a box that is not finite: [nan," in said, said
    assert result.stderr.rstrip().endswith("then run the dump again.")
    assert "pass 1" not in said and not (tmp_path / "s").exists(), "refused before any pass"

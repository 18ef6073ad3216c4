"""inspect: the JSON summary against the store, pictures, locations, errors, streamed statistics."""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from conftest import BIN, finished_store, synthetic_attrs, synthetic_store
from ldcache.store.format import FLAG_MAIN, FORMAT_VERSION, MASK_DTYPE, REGION_FLAGS, STATUS_COMPLETE
from ldcache.inspect.stats import statistics_graph, store_statistics
from ldcache.store.statistics import ENTROPY_BINS, edge_entropy, entropy_bin_edges

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _inspect(*args):
    """`ldcache inspect ARGS`, 200 columns wide: no report line wraps."""
    return subprocess.run([str(BIN / "ldcache"), "inspect", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})


def _all_rows(store):
    group = zarr.open_group(str(store), mode="r")
    ptr = group["ptr"][:]
    masks = np.ascontiguousarray(group["masks"][:]).view(MASK_DTYPE).reshape(-1)
    logits = group["logits"][:]
    per_level = [np.concatenate([np.arange(p[l], p[l + 1]) for p in ptr]) for l in range(ptr.shape[1] - 1)]
    return group, ptr, masks, logits, per_level


def test_json_summary_matches_the_store(shapes_store):
    result = _inspect(shapes_store, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    group, ptr, masks, logits, per_level = _all_rows(shapes_store)
    assert summary["status"] == STATUS_COMPLETE and summary["format_version"] == FORMAT_VERSION
    assert summary["images"] == group["image_ids"].shape[0] and summary["image_views"] == ptr.shape[0]
    assert summary["classes"] == ["star", "eff", "superstar"]  # the dataset's, in the teacher's order
    assert summary["rows_per_level"] == [len(rows) for rows in per_level]
    assert summary["rows_per_level_and_region"]["main"] == [
        int(((masks["flags"][rows] & FLAG_MAIN) > 0).sum()) for rows in per_level]
    for level, rows in enumerate(per_level):
        expected = edge_entropy(logits[rows, :68].reshape(-1, 4, 17)).mean() if len(rows) else None
        got = summary["mean_edge_entropy_per_level"][level]
        assert (got is None and expected is None) or got == pytest.approx(expected, rel=1e-6)
    disk = sum(f.stat().st_size for f in shapes_store.rglob("*") if f.is_file())
    assert summary["bytes_on_disk"] == disk


def test_image_plot_is_a_png_of_the_expected_size(shapes_store, tmp_path):
    from ldcache.inspect.plots import PANEL_IN, SIDE_IN

    group = zarr.open_group(str(shapes_store), mode="r")
    image_id = int(group["image_ids"][0])
    out = tmp_path / "image.png"
    result = _inspect(shapes_store, "--image", image_id, "--view", 1, "--plot", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    maps = int((np.diff(group["ptr"][1]) > 0).sum())  # a map per level with rows, beside the picture
    assert Image.open(out).size == (round(100 * (PANEL_IN * max(maps + 1, 4) + SIDE_IN)), round(100 * 2.4 * PANEL_IN))
    assert "left edge" in result.stdout and "top classes" in result.stdout
    # One anchor per location: no anchor index, no list of a location's rows, no locations column.
    assert not re.search(r"anchor \d+/", result.stdout) and "rows at this location" not in result.stdout
    assert "locations" not in result.stdout
    shutil.copyfile(out, DOCS / "inspect-example.png")  # the README's picture of --plot


def test_stats_plot_and_json(shapes_store, tmp_path):
    out = tmp_path / "stats.png"
    result = _inspect(shapes_store, "--stats", "--json", "--plot", out)
    assert result.returncode == 0, result.stderr[-2000:]
    stats = json.loads(result.stdout)
    assert len(stats["entropy_histogram"]) == 5
    assert sum(map(sum, stats["entropy_histogram"])) == sum(stats["rows_per_level"])
    assert Image.open(out).size == (int(3.2 * 5 * 100), 600)


def test_location_report_at_a_main_location(shapes_store):
    group, ptr, masks, _, _ = _all_rows(shapes_store)
    image_id = int(group["image_ids"][2])
    record = 2 * 2  # image index 2, view 0
    level_rows = masks[ptr[record, 0]:ptr[record, 1]]
    main = level_rows[(level_rows["flags"] & FLAG_MAIN) > 0][0]
    grid_w = int(np.ceil(group["pad_shape"][record][1] / 8))
    x, y = (int(main["loc"]) % grid_w) * 8, (int(main["loc"]) // grid_w) * 8
    result = _inspect(shapes_store, "--image", image_id, "--level", 0, "--at", f"{x},{y}", "--tau", 10, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    location = json.loads(result.stdout)["location"]
    assert location["image_xy"] == [x, y] and "main" in location["regions"]
    assert (location["loc"], location["prior"], location["priors_per_location"]) == (int(main["loc"]), 0, 1)
    assert [row["prior"] for row in location["location_rows"]] == [0] and location["vlr_rule"] == "band"
    for probs in location["edge_distributions"].values():
        assert sum(probs) == pytest.approx(1.0, abs=1e-9) and len(probs) == 17


def test_a_main_only_store_shows_no_vlr_and_says_where_its_rows_are(main_store, shapes_store):
    summary = json.loads(_inspect(main_store, "--json").stdout)
    assert summary["region_mode"] == "main" and summary["vlr_metrics"] == []
    assert summary["rows_per_level_and_region"]["main"] == summary["rows_per_level"]
    for args in ((), ("--stats",)):
        text = _inspect(main_store, *args).stdout
        assert "per level" in text and "VLR" not in text.split("per level")[1], args
        assert ("main (no VLR rows)" in text) == (args == ()), "the summary has no gamma to show"
    # The store's first row (a Main row of record 0: image 0, first view) has no VLR data to show.
    group, ptr, masks, _, _ = _all_rows(main_store)
    level = int(np.flatnonzero(ptr[0, 1:] > 0)[0])
    stride = 8 * 2 ** level
    grid_w = int(np.ceil(group["pad_shape"][0][1] / stride))
    at = f"{(int(masks[0]['loc']) % grid_w) * stride},{(int(masks[0]['loc']) // grid_w) * stride}"
    result = _inspect(main_store, "--image", int(group["image_ids"][0]), "--level", level, "--at", at, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    location = json.loads(result.stdout)["location"]
    assert location["regions"] == ["main"] and location["vlr_ratio"] is None and location["vlr_weight"] is None
    # A location the distill store keeps for its VLR alone is not in the Main-only store.
    group, ptr, masks, _, _ = _all_rows(shapes_store)
    record = 2 * 2
    level_rows = masks[ptr[record, 0]:ptr[record, 1]]
    vlr_only = level_rows[level_rows["flags"] & FLAG_MAIN == 0][0]
    grid_w = int(np.ceil(group["pad_shape"][record][1] / 8))
    x, y = (int(vlr_only["loc"]) % grid_w) * 8, (int(vlr_only["loc"]) // grid_w) * 8
    result = _inspect(main_store, "--image", int(group["image_ids"][2]), "--level", 0, "--at", f"{x},{y}")
    assert result.returncode != 0
    assert "is not stored at level 0: in 'main' mode only Main locations are" in " ".join(result.stderr.split())


def test_errors_are_one_line(shapes_store, tmp_path):
    image_id = int(zarr.open_group(str(shapes_store), mode="r")["image_ids"][0])
    cases = [
        (("--image", 987654), "image id 987654 is not in store"),
        (("--image", image_id, "--level", 7), "level 7 out of range"),
        (("--image", image_id, "--at", "5000,10"), "outside the image"),
        (("--plot", tmp_path / "x.png"), "--plot needs --image"),
    ]
    for args, message in cases:
        result = _inspect(shapes_store, *args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, args
    unfinished = tmp_path / "unfinished"
    shutil.copytree(shapes_store, unfinished)
    zarr.open_group(str(unfinished), mode="r+").attrs["status"] = "masks-written"
    result = _inspect(unfinished)
    assert result.returncode == 2 and "unfinished" in result.stderr and "--resume" in result.stderr
    future = tmp_path / "future"
    shutil.copytree(shapes_store, future)
    zarr.open_group(str(future), mode="r+").attrs["ldcache_format"] = 99
    result = _inspect(future)
    said = " ".join(result.stderr.split())
    assert result.returncode == 2 and "format version 99" in said
    assert "Dump it again with this version of ldcache: `ldcache dump-teacher" in said and "--out NEW_STORE" in said
    result = _inspect(tmp_path / "nowhere")
    assert result.returncode == 2 and "does not exist" in result.stderr


def _synthetic_store(path, records, rows_per_level, num_classes=3, chunk_rows=2048):
    """A finished one-view store of random rows that StoreReader accepts (no teacher, no images), and
    its rows. `rows_per_level`: [L] rows of every record, or [records, L] rows of each."""
    from ldcache.store.reader import StoreReader

    counts = np.broadcast_to(np.asarray(rows_per_level), (records, len(np.atleast_2d(rows_per_level)[0])))
    synthetic_store(path, counts, num_classes, chunk_rows)
    reader = StoreReader(path)
    return reader, int(reader.ptr[-1, -1])


def test_stats_stream_within_bounded_memory(tmp_path):
    reader, total = _synthetic_store(tmp_path / "big", records=500, rows_per_level=[1200, 400, 100, 25, 6])
    logits_bytes = total * 71 * 2
    assert logits_bytes > 100 * 2**20  # a few hundred image-views worth over 100 MiB of logits
    tracemalloc.start()
    stats = store_statistics(reader)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert stats["rows_per_level"] == [500 * n for n in (1200, 400, 100, 25, 6)]
    assert peak < logits_bytes / 4, f"peak {peak / 2**20:.0f} MiB for {logits_bytes / 2**20:.0f} MiB of logits"


def test_a_location_near_the_right_edge_stays_in_its_row():
    from types import SimpleNamespace

    from ldcache.inspect.report import locate
    from ldcache.store.targets import targets_from_rows

    # A 320-px wide view: level 0 (stride 8) has 40 columns. Rows at the last column of grid row 3
    # and at the first column of grid row 4.
    grid = [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]
    rows = [np.zeros(2, MASK_DTYPE)] + [np.zeros(0, MASK_DTYPE)] * 4
    rows[0]["loc"] = [3 * 40 + 39, 4 * 40]
    targets = targets_from_rows(rows, np.zeros((2, 68 + 3), np.float32), grid, 3)
    reader = SimpleNamespace(img_shape={0: (320, 320)}, strides=(8, 16, 32, 64, 128),
                             attrs=SimpleNamespace(head=SimpleNamespace(center_offset=0.0)))
    for x in (312.0, 316.0, 319.0):  # nearest anchor points 39, 39.5 -> 40 (past the grid), 39.9 -> 40
        assert locate(reader, 0, targets, (x, 24.0), 0, grid=False) == (0, 3 * 40 + 39, 0), x


def test_stats_without_json_prints_the_statistics_computed_once(shapes_store, monkeypatch):
    from typer.testing import CliRunner

    import ldcache.inspect.stats as stats
    from ldcache.cli import app

    calls = []
    original = stats.store_statistics
    monkeypatch.setattr(stats, "store_statistics", lambda *a: calls.append(1) or original(*a))
    result = CliRunner().invoke(app, ["inspect", str(shapes_store), "--stats"])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1
    assert "edge entropy per row" in result.output and "median" in result.output
    assert "bytes on disk" not in result.output, "--stats shows the statistics, not the summary"


def test_the_summary_reads_no_logits_and_agrees_with_a_full_pass(shapes_store, tmp_path):
    copy = tmp_path / "no-logits"
    shutil.copytree(shapes_store, copy)
    shutil.rmtree(copy / "logits" / "c")  # every logits chunk gone: a summary must not need one
    result = _inspect(copy, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    full = json.loads(_inspect(shapes_store, "--stats", "--json").stdout)
    assert summary["rows_per_level"] == full["rows_per_level"] and sum(full["rows_per_level"]) > 0
    assert summary["rows_per_level_and_region"] == full["rows_per_level_and_region"]
    for a, b in zip(summary["mean_edge_entropy_per_level"], full["mean_edge_entropy"]):
        assert (a is None and b is None) or a == pytest.approx(b, rel=1e-9)
    stored = zarr.open_group(str(shapes_store), mode="r").attrs["statistics"]
    assert stored["entropy_histogram"] == full["entropy_histogram"]


def _blocks_store(tmp_path):
    """Six blocks of 64 records, the last one short, in chunks of 64 rows: blocks 1 and 4 have no
    rows, the others about 1800 rows of varied records (about 28 chunks: several slices each)."""
    counts = np.random.default_rng(1).integers(0, 12, (5 * 64 + 40, 5))
    counts[64:128] = counts[256:320] = 0
    return _synthetic_store(tmp_path / "blocks", len(counts), counts, chunk_rows=64)


def _per_row_statistics(store) -> dict:
    """The statistics the plain way: every row's entropy, level and flags, then sums per level."""
    _, _, masks, logits, per_level = _all_rows(store)
    entropy = edge_entropy(logits[:, :68].reshape(-1, 4, 17)).mean(axis=1, dtype=np.float64)
    edges = entropy_bin_edges(17)
    return {
        "entropy_histogram": [np.histogram(entropy[rows], bins=edges)[0].tolist() for rows in per_level],
        "mean_edge_entropy": [float(entropy[rows].mean()) if len(rows) else None for rows in per_level],
        "rows_per_level": [len(rows) for rows in per_level],
        "rows_per_level_and_region": {name: [int(((masks["flags"][rows] & bit) > 0).sum()) for rows in per_level]
                                      for name, bit in REGION_FLAGS.items()},
    }


def test_block_statistics_equal_a_per_row_computation(tmp_path):
    reader, _ = _blocks_store(tmp_path)
    assert reader.blocks.num_blocks == 6 and [reader.blocks.chunks(b) for b in (1, 4)] == [range(0), range(0)]
    stats, expected = store_statistics(reader), _per_row_statistics(reader.path)
    for name in ("entropy_histogram", "rows_per_level", "rows_per_level_and_region"):
        assert stats[name] == expected[name], name
    assert stats["mean_edge_entropy"] == pytest.approx(expected["mean_edge_entropy"], rel=1e-12)


def _tree_size(parts: int, split_every: int) -> int:
    """Add tasks of a tree of fan-in `split_every` over `parts` partial sums."""
    adds = 0
    while parts > 1:
        parts = -(-parts // split_every)
        adds += parts
    return adds


@pytest.mark.parametrize("split_every", [2, 4])
def test_the_graph_has_a_task_per_block_and_a_bounded_reduction_tree(tmp_path, split_every):
    from dask.core import get_dependencies

    reader, _ = _blocks_store(tmp_path)
    delayed = statistics_graph(reader, split_every=split_every)
    graph = dict(delayed.__dask_graph__())
    deps = {key: get_dependencies(graph, key) for key in graph}
    leaves = [key for key in graph if not deps[key]]
    assert len(leaves) == reader.blocks.num_blocks and all(str(key).startswith("block_sums") for key in leaves)
    assert len(graph) == reader.blocks.num_blocks + _tree_size(reader.blocks.num_blocks, split_every)
    assert max(map(len, deps.values())) <= split_every < reader.blocks.num_blocks  # none waits on every block
    feeds = [key for d in deps.values() for key in d]
    assert sorted(feeds) == sorted(set(graph) - {delayed.key}), "every task feeds exactly one add"
    np.testing.assert_allclose(delayed.compute(scheduler="sync"), statistics_graph(reader).compute(), rtol=1e-12)


def test_a_block_task_gets_only_its_own_row_pointers(tmp_path, monkeypatch):
    import ldcache.inspect.stats as stats

    reader, _ = _blocks_store(tmp_path)
    ptr, seen = reader.ptr, []
    blocks = [ptr[r.start:r.stop] for r in map(reader.blocks.records, range(reader.blocks.num_blocks))]
    original = stats.block_sums
    monkeypatch.setattr(stats, "block_sums", lambda read_rows, block_ptr, *a: seen.append(block_ptr)
                        or original(read_rows, block_ptr, *a))
    delayed = statistics_graph(reader)
    reader.ptr = reader.blocks.ptr = None  # a task that reached for the store's ptr would fail
    total = delayed.compute(scheduler="threads")
    assert len(seen) == len(blocks) and all(any(np.array_equal(b, s) for s in seen) for b in blocks)
    assert not any(np.shares_memory(block_ptr, ptr) for block_ptr in seen)
    assert total[:, ENTROPY_BINS + 1].sum() == (ptr[:, -1] - ptr[:, 0]).sum()


RETINA_MAIN = {"type": "MaxIoUAssigner", "pos_iou_thr": 0.5, "neg_iou_thr": 0.4, "min_pos_iou": 0,
               "ignore_iof_thr": -1}
FCOS_MAIN = {"type": "FCOSCenterSampling", "center_sampling": True, "center_sample_radius": 1.5,
             "regress_ranges": [[-1.0, 64.0], [64.0, 128.0], [128.0, 256.0], [256.0, 512.0], [512.0, 1e8]]}
# The location the family tests look at: level 0 (stride 8, a 40 x 40 grid at 320 px), cell (12, 30).
CELL, LOC = (12, 30), 30 * 40 + 12


def _family_store(path, level_rows, values, teacher_head="RetinaDistHead", priors=9, main=RETINA_MAIN,
                  vlr="band_without_main"):
    """A finished store of one image-view (image id 1, 320 px) of a head with `priors` anchors per
    location (one point with the 'inside_gt' rule) and these region rules, holding the MASK_DTYPE
    rows per level `level_rows` and their `values` [R, 68 + 3]; no teacher, no images. Returns the
    StoreReader."""
    from ldcache.store.reader import StoreReader

    attrs = synthetic_attrs(3, 1, 512)
    points = vlr == "inside_gt"
    head = dataclasses.replace(attrs.head, num_base_priors=priors, priors="points" if points else "anchors",
                               center_offset=0.5 if points else 0.0, octave_base_scale=0.0 if points else 4.0,
                               scales_per_octave=1 if points else 3)
    attrs = dataclasses.replace(attrs, teacher=dataclasses.replace(attrs.teacher, head=teacher_head), head=head,
                                region=dataclasses.replace(attrs.region, main=main, vlr=vlr))
    finished_store(path, attrs, [[len(rows) for rows in level_rows]], np.concatenate(level_rows), values, "family")
    return StoreReader(path)


def _rows(level_rows: list[list[tuple[int, int, int]]]) -> list[np.ndarray]:
    """Per level, MASK_DTYPE rows of (loc, prior, flags), VLR data zero."""
    out = []
    for rows in level_rows:
        table = np.zeros(len(rows), MASK_DTYPE)
        if rows:
            table["loc"], table["prior"], table["flags"] = zip(*rows)
        out.append(table)
    return out


@pytest.fixture
def retina_store(tmp_path):
    """A 9-anchor RetinaNet store: at P3 cell (12, 30) the rows of anchors 1 (Main, peaked), 5 (Main,
    flatter) and 7 (VLR only, the flattest), elsewhere rows of anchors 5 and 0; one P4 row.
    Returns (reader, stored rows as read back from the arrays)."""
    from ldcache.store.format import FLAG_VLR_OFFICIAL

    rows = _rows([[(LOC - 1, 5, FLAG_MAIN), (LOC, 1, FLAG_MAIN), (LOC, 5, FLAG_MAIN), (LOC, 7, FLAG_VLR_OFFICIAL),
                   (LOC + 1, 0, FLAG_VLR_OFFICIAL)], [(7, 3, FLAG_MAIN)], [], [], []])
    rng = np.random.default_rng(3)
    values = rng.normal(0, 1, (6, 68 + 3)).astype(np.float32)
    values[:, :68] *= np.array([3, 4, 0.5, 0, 3, 3])[:, None]  # anchor 7 at the cell: flat, anchor 5 flatter than 1
    reader = _family_store(tmp_path / "retina.zarr", rows, values)
    return reader, _all_rows(reader.path)


def _stored_row(stored, loc: int, prior: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask row, stored logits) of the P3 row at (loc, prior), found in the raw arrays."""
    _, _, masks, logits, per_level = stored
    level0 = per_level[0]
    (i,) = level0[(masks["loc"][level0] == loc) & (masks["prior"][level0] == prior)]
    return masks[i], logits[i].astype(np.float64)


def test_the_summary_names_the_family_and_its_region_rules(retina_store):
    from ldcache.domain.region_rule import stored_rule

    reader, _ = retina_store
    summary = json.loads(_inspect(reader.path, "--json").stdout)
    assert (summary["teacher_head"], summary["priors_per_location"], summary["prior_kind"]) == (
        "RetinaDistHead", 9, "anchors")
    assert summary["region_main"] == RETINA_MAIN and summary["region_vlr"] == "band_without_main"
    assert summary["region_rules"] == stored_rule(reader.attrs.region).describe()
    text = _inspect(reader.path).stdout
    assert "RetinaDistHead: 9 anchors per location" in text
    assert "Main MaxIoUAssigner(pos_iou_thr=0.5" in text and "VLR band_without_main" in text


def test_the_report_of_anchor_5_shows_that_rows_values(retina_store):
    reader, stored = retina_store
    x, y = CELL[0] * 8, CELL[1] * 8
    result = _inspect(reader.path, "--image", 1, "--at", f"{x},{y}", "--anchor", 5, "--tau", 10, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    location = json.loads(result.stdout)["location"]
    mask, logits = _stored_row(stored, LOC, 5)
    assert (location["level"], location["loc"], location["prior"], location["grid_xy"]) == (0, LOC, 5, list(CELL))
    assert location["regions"] == ["main"] and location["image_xy"] == [x, y]
    for k, edge in enumerate(("left", "top", "right", "bottom")):
        z = logits[17 * k:17 * (k + 1)] / 10
        np.testing.assert_allclose(location["edge_distributions"][edge], np.exp(z) / np.exp(z).sum(), rtol=1e-6)
    assert [c["logit"] for c in location["top_classes"]] == sorted(logits[68:].tolist(), reverse=True)
    assert location["vlr_ratio"] == {"official": float(mask["vlr_ratio"][0]), "diou": float(mask["vlr_ratio"][1])}
    assert [(r["prior"], r["regions"]) for r in location["location_rows"]] == [
        (1, ["main"]), (5, ["main"]), (7, ["vlr_official"])]
    text = _inspect(reader.path, "--image", 1, "--at", f"{x},{y}", "--anchor", 5).stdout
    assert f"P3 (stride 8) grid {list(CELL)} anchor 5/9 = image [{x}, {y}]" in text
    assert "anchor 1: main" in text and "anchor 5 (shown): main" in text and "anchor 7: vlr_official" in text
    assert re.search(r"P3 +│ +5 +│ +3 +│", text), "the image table counts the 5 rows at 3 locations"


def test_locate_at_a_pixel_of_several_anchors_takes_the_most_ambiguous(retina_store):
    from ldcache.store.statistics import edge_entropy

    reader, stored = retina_store
    x, y = CELL[0] * 8 + 3, CELL[1] * 8 - 2  # nearest anchor point: the cell's
    ambiguity = {prior: edge_entropy(_stored_row(stored, LOC, prior)[1][:68].reshape(4, 17)).mean()
                 + 10 * (prior != 7) for prior in (1, 5, 7)}  # Main first, then the flattest
    assert max(ambiguity, key=ambiguity.get) == 5
    result = _inspect(reader.path, "--image", 1, "--at", f"{x},{y}", "--json")
    location = json.loads(result.stdout)["location"]
    assert (location["loc"], location["prior"]) == (LOC, 5)
    assert [r["prior"] for r in location["location_rows"]] == [1, 5, 7]
    assert json.loads(_inspect(reader.path, "--image", 1, "--at", f"{x},{y}", "--anchor", 7,
                               "--json").stdout)["location"]["prior"] == 7
    # The same choice without --at, over the whole record, and restricted to one anchor.
    assert json.loads(_inspect(reader.path, "--image", 1, "--json").stdout)["location"]["prior"] == 5
    most = json.loads(_inspect(reader.path, "--image", 1, "--anchor", 3, "--json").stdout)["location"]
    assert (most["level"], most["loc"], most["prior"]) == (1, 7, 3)


def test_anchor_errors_are_one_line(retina_store):
    reader, _ = retina_store
    x, y = CELL[0] * 8, CELL[1] * 8
    cases = [(("--at", f"{x},{y}", "--anchor", 3), "anchor 3 is not stored at location 96.0,240.0 "
                                                   "(stored there: P3 anchors 1, 5, 7)"),
             (("--anchor", 9), "anchor 9 out of range: the store's RetinaDistHead has 9 anchors per location"),
             (("--anchor", 8), "no rows at the chosen level(s) of anchor 8")]
    for args, message in cases:
        result = _inspect(reader.path, "--image", 1, *args)
        said = " ".join(result.stderr.split())
        assert result.returncode == 2 and message in said and "Traceback" not in said, args


def _figure_parts(fig) -> dict:
    """The image figure's axes by role, told apart by their titles: the picture, the maps by level
    name ('P3'), the histograms by edge."""
    axes = {ax.get_title().split(" ")[0].rstrip(":"): ax for ax in fig.axes if ax.get_title()}
    return {"picture": axes.pop("image"), "maps": {k: v for k, v in axes.items() if k.startswith("P")},
            "histograms": [axes[edge] for edge in ("left", "top", "right", "bottom")]}


def _lines(ax, gid: str) -> list:
    return [line for line in ax.lines if line.get_gid() == gid]


def _assert_readable(fig) -> None:
    """Every text at 9 pt or more, and no two titles (axes, subfigures, figure) overlapping."""
    from matplotlib.text import Text

    fig.canvas.draw()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert min(t.get_fontsize() for t in texts) >= 9
    headings = {f.get_suptitle() for f in (fig, *fig.subfigs)} - {""}
    titles = [ax.title for ax in fig.axes if ax.get_title()] + [t for t in texts if t.get_text() in headings]
    boxes = [t.get_window_extent() for t in titles]
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[:i]):
            assert not a.overlaps(b), (titles[i].get_text(), titles[j].get_text())


def _view_gt_boxes(group, record: int, views: int) -> np.ndarray:
    """The record's GT boxes in its view, the plain way: the stored boxes rescaled, clipped to the
    view's image, mirrored in a flipped view."""
    lo, hi = group["gt_ptr"][record // views:record // views + 2]
    boxes = group["gt_boxes"][lo:hi].astype(np.float64) * np.tile(group["scale_factor"][record], 2)
    h, w = group["img_shape"][record]
    boxes[:, 0::2], boxes[:, 1::2] = boxes[:, 0::2].clip(0, w), boxes[:, 1::2].clip(0, h)
    if group["flip"][record]:
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    return boxes


def _expected_gt_bins(point, logits: np.ndarray, boxes: np.ndarray, stride: int) -> np.ndarray:
    """[4] GT edge distances in bins from the prior point: to the GT box of highest IoU with the box
    the stored logits decode to (softmax expectations at temperature 1)."""
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    left, top, right, bottom = (probs / probs.sum(axis=1, keepdims=True)) @ np.arange(17) * stride
    x, y = point
    ix = np.minimum(x + right, boxes[:, 2]) - np.maximum(x - left, boxes[:, 0])
    iy = np.minimum(y + bottom, boxes[:, 3]) - np.maximum(y - top, boxes[:, 1])
    inter = ix.clip(0) * iy.clip(0)
    union = (left + right) * (top + bottom) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    x1, y1, x2, y2 = boxes[np.argmax(inter / union)]
    return np.array([x - x1, y - y1, x2 - x, y2 - y]) / stride


def test_the_image_figure_shows_levels_with_rows_a_scale_the_location_and_gt_edges(shapes_store):
    from ldcache.inspect.plots import image_figure, view_image
    from ldcache.inspect.report import most_ambiguous
    from ldcache.store.reader import StoreReader

    reader = StoreReader(shapes_store)
    group, ptr, masks, logits, _ = _all_rows(shapes_store)
    record = 2 * 2 + 1  # image index 2, flipped view
    targets = reader.read_record(record)
    key = most_ambiguous(targets, None)
    fig = image_figure(reader, int(group["image_ids"][2]), record, targets, key, 10.0, view_image(reader, record))
    parts = _figure_parts(fig)
    with_rows = [f"P{lvl + 3}" for lvl in range(5) if ptr[record, lvl + 1] > ptr[record, lvl]]
    assert list(parts["maps"]) == with_rows and len(with_rows) < 5
    assert fig.subfigs[0].get_suptitle().endswith(
        "no rows at " + ", ".join(f"P{lvl + 3}" for lvl in range(5) if f"P{lvl + 3}" not in with_rows))
    images = [ax.images[0] for ax in parts["maps"].values()]
    (scale,) = [image.colorbar for image in images if image.colorbar is not None]
    assert all(image.get_clim() == pytest.approx((0, np.log(17))) for image in images)
    assert "nats" in scale.ax.get_ylabel() and scale.ax.get_ylim() == pytest.approx((0, np.log(17)))
    legend = fig.subfigs[0].legends[0]
    fig.canvas.draw()
    right_of_maps = max(ax.get_window_extent().x1 for ax in parts["maps"].values())
    assert legend.get_window_extent().x0 > right_of_maps and min(t.get_fontsize() for t in legend.texts) >= 9
    # The shown row's prior point, on the picture in the view's pixels and on its map in grid cells.
    grid_w = int(np.ceil(group["pad_shape"][record][1] / reader.strides[key.level]))
    stride, offset = reader.strides[key.level], reader.attrs.head.center_offset
    cell = (key.loc % grid_w, key.loc // grid_w)
    point = tuple((c + offset) * stride for c in cell)
    (marker,) = _lines(parts["picture"], "location")
    assert tuple(marker.get_xydata()[0]) == pytest.approx(point)
    (marker,) = _lines(parts["maps"][f"P{key.level + 3}"], "location")
    assert tuple(marker.get_xydata()[0]) == cell
    assert all(not _lines(ax, "location") for name, ax in parts["maps"].items() if name != f"P{key.level + 3}")
    # Each histogram's GT line, from the stored GT boxes and the row's stored logits.
    rows = np.arange(ptr[record, key.level], ptr[record, key.level + 1])
    (row,) = rows[(masks["loc"][rows] == key.loc) & (masks["prior"][rows] == key.prior)]
    raw = logits[row, :68].astype(np.float64).reshape(4, 17)
    expected = _expected_gt_bins(point, raw, _view_gt_boxes(group, record, 2), stride)
    probs = np.exp(raw / 10 - (raw / 10).max(axis=1, keepdims=True))
    means = (probs / probs.sum(axis=1, keepdims=True)) @ np.arange(17)
    for ax, gt, mean in zip(parts["histograms"], expected, means):
        (line,) = _lines(ax, "gt")
        drawn = gt if 0 <= gt <= 16 else 16.75 if gt > 16 else -0.75  # one the bins cannot express: in the margin
        assert line.get_xdata()[0] == pytest.approx(drawn, abs=1e-4)
        assert line.get_label().startswith(f"GT {gt:.1f}")
        assert _lines(ax, "mean")[0].get_xdata()[0] == pytest.approx(mean, abs=1e-4)
    assert "GT box of highest IoU" in fig.subfigs[1].get_supxlabel()
    _assert_readable(fig)


def test_the_image_figure_of_several_anchors_and_gt_edges_outside_the_bins(retina_store, tmp_path, monkeypatch):
    import ldcache.inspect.plots as plots
    from ldcache.inspect.report import RowKey

    reader, _ = retina_store
    blank = np.zeros((320, 320, 3), np.uint8)
    fig = plots.image_figure(reader, 1, 0, reader.read_record(0), RowKey(0, LOC, 5), 1.0, blank)
    parts = _figure_parts(fig)
    assert fig.get_suptitle() == f"P3 location {list(CELL)} anchor 5/9 (main)"
    assert list(parts["maps"]) == ["P3", "P4"] and fig.subfigs[0].get_suptitle().endswith("no rows at P5, P6, P7")
    labels = [t.get_text() for ax in (parts["picture"], parts["maps"]["P3"]) for t in ax.texts]
    assert labels == [f"P3 {list(CELL)} anchor 5/9"] * 2
    # The store has no GT boxes: no GT line, and the caption says why.
    assert not any(_lines(ax, "gt") for ax in parts["histograms"])
    assert "No GT line: no GT box in this view" in fig.subfigs[1].get_supxlabel()
    _assert_readable(fig)
    # A GT box from 4 px right of the prior point (96, 240) to 200 px past it: before bin 0 and past bin 16.
    monkeypatch.setattr(plots, "view_gt_boxes", lambda *a: np.array([[100.0, 40.0, 296.0, 400.0]], np.float32))
    fig = plots.image_figure(reader, 1, 0, reader.read_record(0), RowKey(0, LOC, 5), 1.0, blank)
    lines = [_lines(ax, "gt")[0] for ax in _figure_parts(fig)["histograms"]]
    assert [line.get_xdata()[0] for line in lines] == [-0.75, 16.75, 16.75, 16.75]
    assert [line.get_label() for line in lines] == ["GT -0.5 (before bin 0)", "GT 25.0 (past bin 16)",
                                                   "GT 25.0 (past bin 16)", "GT 20.0 (past bin 16)"]
    monkeypatch.setattr(plots, "view_gt_boxes", lambda *a: np.array([[0.0, 0.0, 4.0, 4.0]], np.float32))
    fig = plots.image_figure(reader, 1, 0, reader.read_record(0), RowKey(0, LOC, 5), 1.0, blank)
    assert "No GT line: no GT box overlaps the teacher's box" in fig.subfigs[1].get_supxlabel()
    monkeypatch.setattr(plots, "view_image", lambda *a: blank)
    out = plots.plot_image(reader, 1, 0, reader.read_record(0), RowKey(0, LOC, 5), 1.0, tmp_path / "fig.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_fcos_vlr_is_no_iou_band(tmp_path):
    from ldcache.store.format import FLAG_VLR_DIOU, FLAG_VLR_OFFICIAL

    vlr = FLAG_VLR_OFFICIAL | FLAG_VLR_DIOU
    rows = _rows([[(LOC, 0, vlr), (LOC + 1, 0, FLAG_MAIN)], [], [], [], []])
    rows[0]["vlr_ratio"][0] = 1.0  # as the dump stores an inside_gt VLR point: ratio 1, one step of weight 1
    rows[0]["vlr_step_ratio"][0, :, 0] = rows[0]["vlr_step_weight"][0, :, 0] = 1.0
    values = np.random.default_rng(4).normal(0, 1, (2, 68 + 3)).astype(np.float32)
    reader = _family_store(tmp_path / "fcos.zarr", rows, values, "FCOSDistHead", 1, FCOS_MAIN, "inside_gt")
    summary = json.loads(_inspect(reader.path, "--json").stdout)
    assert (summary["teacher_head"], summary["priors_per_location"], summary["prior_kind"]) == (
        "FCOSDistHead", 1, "points")
    assert "Main FCOSCenterSampling(center_sampling=True" in summary["region_rules"]
    # Its rows carry both metrics' flags: the tables count them once, under one VLR heading.
    for args in ((), ("--stats",), ("--image", 1)):
        text = _inspect(reader.path, *args).stdout
        assert "VLR inside a GT" in text and "VLR official" not in text and "VLR diou" not in text, args
    assert "FCOSDistHead: 1 point per location" in _inspect(reader.path).stdout
    x, y = CELL[0] * 8 + 4, CELL[1] * 8 + 4  # FCOS points sit at (cell + 0.5) x stride
    location = json.loads(_inspect(reader.path, "--image", 1, "--at", f"{x},{y}", "--json").stdout)["location"]
    assert (location["loc"], location["image_xy"], location["vlr_rule"]) == (LOC, [x, y], "inside_gt")
    assert location["vlr_ratio"] is None and location["vlr_weight"] is None
    text = _inspect(reader.path, "--image", 1, "--at", f"{x},{y}").stdout
    assert "regions: VLR (inside a GT, weighted by the student's score at train time)" in text
    assert "VLR ratio" not in text and "weight {" not in text and not re.search(r"anchor \d+/", text)


def test_the_maps_mark_the_vlr_of_either_stored_metric(tmp_path):
    """A store of the DIoU metric alone flags its VLR rows with the DIoU bit only: they are marked too."""
    import ldcache.inspect.plots as plots
    from ldcache.inspect.report import RowKey
    from ldcache.store.format import FLAG_VLR_DIOU

    rows = _rows([[(LOC - 1, 0, FLAG_VLR_DIOU), (LOC, 0, FLAG_MAIN), (LOC + 1, 0, FLAG_VLR_DIOU)], [], [], [], []])
    values = np.random.default_rng(5).normal(0, 1, (3, 68 + 3)).astype(np.float32)
    reader = _family_store(tmp_path / "diou.zarr", rows, values, "GFLHead", 1, {"type": "ATSSAssigner", "topk": 9},
                           "band")
    fig = plots.image_figure(reader, 1, 0, reader.read_record(0), RowKey(0, LOC, 0), 1.0,
                             np.zeros((320, 320, 3), np.uint8))
    cyan = [c for c in _figure_parts(fig)["maps"]["P3"].collections
            if len(c.get_facecolor()) and tuple(c.get_facecolor()[0][:3]) == (0.0, 1.0, 1.0)]
    marked = sorted(int(y) * 40 + int(x) for x, y in cyan[0].get_offsets())
    assert marked == [LOC - 1, LOC + 1]

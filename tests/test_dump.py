"""dump-teacher: store contents, resume after SIGKILL, torchrun, and bad inputs."""
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (CONFIGS, PAPER_TERMS, TEACHER_CONFIG, TORCHRUN, assert_same_arrays as _assert_same_arrays,
                      dump_args as _dump_args, edited_dataset as _edited_dataset, open_log_env,
                      run_dump_cli as _run_cli, store_arrays as _arrays)
from ldcache.errors import LDCacheError
from ldcache.store.format import FLAG_MAIN, STATUS_COMPLETE, STATUS_CREATED
from ldcache.store.reader import StoreReader, open_store


def _blocks_done(out) -> int:
    """Blocks whose done flag is set in a store that may be unfinished."""
    group, _ = open_store(out, require_complete=False)
    return int(group["progress/done"][:].sum())


@pytest.fixture(scope="module")
def reference_store(shapes_store):
    return shapes_store


def test_store_holds_the_teacher_logits_at_region_rows(reference_store, shapes_root, random_teacher):
    from ldcache.domain.ld_config import load_config
    from ldcache.domain.teacher import build_teacher, teacher_outputs
    from ldcache.dump.scan import scan_dataset
    from ldcache.dump.teacher_pass import ViewDataset, _collate
    from ldcache.domain.views import View

    reader = StoreReader(reference_store)
    assert reader.attrs.status == STATUS_COMPLETE and reader.num_views == 2
    assert reader.num_records == 2 * 48
    summary = reader.attrs.summary
    assert summary.image_views == 96 and summary.compression_vs_dense_fp16 > 1

    model = build_teacher(load_config(TEACHER_CONFIG), random_teacher, "cpu")
    scan = scan_dataset(shapes_root / "annotations/instances_train.json", shapes_root / "images/train",
                        ("star", "eff", "superstar"))
    for image_index in (0, 1):
        for view_index, view in enumerate([View((320, 320), False), View((320, 320), True)]):
            record = reader.record_index(scan.images[image_index].image_id, view_index)
            _, batch = _collate([ViewDataset([(record, scan.images[image_index], view)])[0]])
            cls_scores, bbox_preds = teacher_outputs(model, batch)
            levels = reader.read_record(record).levels()
            assert sum(len(l.loc) for l in levels) > 0
            assert any((l.flags & FLAG_MAIN).any() for l in levels)
            for level, cls, reg in zip(levels, cls_scores, bbox_preds):
                assert (level.flags > 0).all(), "distill mode stores region rows only"
                w = reg.shape[-1]
                y, x = level.loc // w, level.loc % w
                exact_reg = reg[0][:, y, x].t().reshape(-1, 4, 17).numpy()
                exact_cls = cls[0][:, y, x].t().numpy()
                np.testing.assert_allclose(level.reg.astype(np.float32), exact_reg, rtol=1e-3, atol=1e-3)
                np.testing.assert_allclose(level.cls.astype(np.float32), exact_cls, rtol=1e-3, atol=1e-3)


def test_pass_one_computes_each_records_regions_once_and_removes_its_staging(reference_store, shapes_root,
                                                                             random_teacher, tmp_path, monkeypatch):
    from ldcache.domain.rows import RegionRowMaker
    from ldcache.domain.views import View
    from ldcache.dump.run import DumpOptions, run_dump

    calls = []
    original = RegionRowMaker.rows
    monkeypatch.setattr(RegionRowMaker, "rows", lambda self, *a: calls.append(1) or original(self, *a))
    out = tmp_path / "once.zarr"
    run_dump(DumpOptions(TEACHER_CONFIG, random_teacher, shapes_root / "annotations/instances_train.json",
                         shapes_root / "images/train", out, [View((320, 320), False), View((320, 320), True)],
                         workers=0, block_size=4))
    assert len(calls) == 96, "one region computation per record (48 images x 2 views)"
    assert not Path(f"{out}.pass1").exists(), "pass 1's staged rows are removed once written"
    reference = _arrays(reference_store)
    mine = _arrays(out)
    for name in ("ptr", "masks", "img_shape", "image_ids"):
        assert np.array_equal(mine[name], reference[name]), name


def test_dense_mode_stores_every_location(shapes_root, random_teacher, tmp_path):
    out = tmp_path / "dense"
    result = _run_cli(_dump_args(shapes_root, random_teacher, out, "--region", "dense", "--no-flip"))
    assert result.returncode == 0, result.stderr[-3000:]
    reader = StoreReader(out)
    pad = reader.group["pad_shape"][0]
    levels = reader.read_record(0).levels()
    for level, stride in zip(levels, (8, 16, 32, 64, 128)):
        expected = int(np.ceil(pad[0] / stride) * np.ceil(pad[1] / stride))
        assert np.array_equal(level.loc, np.arange(expected))


def _killed_dump(shapes_root, random_teacher, out, kill_at: str) -> subprocess.CompletedProcess:
    """A dump that SIGKILLs itself at a chosen point (LDCACHE_KILL_AT), as a dying node would."""
    return _run_cli(_dump_args(shapes_root, random_teacher, out), env={"LDCACHE_KILL_AT": kill_at})


def _refused_then_resumed(shapes_root, random_teacher, out, reference_store) -> None:
    """The killed dump's store is refused by readers and by the command without --resume (whose run
    takes over the lock the killed dump left), and --resume finishes it to the reference's arrays."""
    assert Path(f"{out}.lock").exists(), "a killed dump cannot remove its lock"
    with pytest.raises(LDCacheError, match="unfinished|does not exist"):
        StoreReader(out)
    refused = _run_cli(_dump_args(shapes_root, random_teacher, out))
    assert refused.returncode == 2 and "--resume" in refused.stderr and "Traceback" not in refused.stderr
    assert "another dump" not in refused.stderr, "the dead dump's lock is taken over"
    resumed = _run_cli(_dump_args(shapes_root, random_teacher, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_arrays(_arrays(out), _arrays(reference_store))
    assert not Path(f"{out}.lock").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kill_at,blocks_done", [
    ("pass2:1", 1),  # between blocks: right after the chosen block
    ("pass2:5", 5),
    ("write:logits:2", 1),  # inside a block: block 1's logits shard is being written; block 0 is done
    ("write:progress/done:3", 2),  # block 2's logits and statistics are written, its done flag is not
])
def test_a_dump_killed_in_pass_2_resumes_to_identical_arrays(reference_store, shapes_root, random_teacher,
                                                             tmp_path, kill_at, blocks_done):
    out = tmp_path / "killed"
    killed = _killed_dump(shapes_root, random_teacher, out, kill_at)
    assert killed.returncode == -signal.SIGKILL
    assert _blocks_done(out) == blocks_done
    _refused_then_resumed(shapes_root, random_teacher, out, reference_store)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["deleted", "flipped byte"])
def test_an_unfinished_store_with_damaged_masks_is_finished_by_resume(reference_store, shapes_root, random_teacher,
                                                                      tmp_path, fault):
    out = tmp_path / "killed"
    assert _killed_dump(shapes_root, random_teacher, out, "pass2:1").returncode == -signal.SIGKILL
    shard = out / "masks" / "c" / "5" / "0"  # of a block pass 2 has not reached
    if fault == "deleted":
        shard.unlink()
    else:
        data = bytearray(shard.read_bytes())
        data[20] ^= 0x10
        shard.write_bytes(bytes(data))
    resumed = _run_cli(_dump_args(shapes_root, random_teacher, out, "--resume"))
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    assert "block 5: its masks are damaged" in " ".join(resumed.stderr.split())
    _assert_same_arrays(_arrays(out), _arrays(reference_store))


@pytest.mark.slow
def test_a_dump_killed_in_pass_1_resumes_to_identical_arrays(reference_store, shapes_root, random_teacher,
                                                             tmp_path):
    out = tmp_path / "killed"
    killed = _killed_dump(shapes_root, random_teacher, out, "pass1:3")
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "zarr.json").exists() and Path(f"{out}.pass1").is_dir(), "killed before the layout"
    resumed = _run_cli(_dump_args(shapes_root, random_teacher, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_arrays(_arrays(out), _arrays(reference_store))


@pytest.mark.slow
def test_a_dump_killed_writing_the_masks_of_pass_1_resumes_to_identical_arrays(reference_store, shapes_root,
                                                                               random_teacher, tmp_path):
    out = tmp_path / "killed"
    killed = _killed_dump(shapes_root, random_teacher, out, "write:masks:2")
    assert killed.returncode == -signal.SIGKILL
    _, attrs = open_store(out, require_complete=False)
    assert attrs.status == STATUS_CREATED, "killed after the layout, before every mask was written"
    _refused_then_resumed(shapes_root, random_teacher, out, reference_store)


@pytest.mark.slow
def test_two_torchrun_processes_write_the_same_store(reference_store, shapes_root, random_teacher, tmp_path):
    out = tmp_path / "two"
    ann, images = (shapes_root / "annotations/instances_train.json").resolve(), (shapes_root / "images/train").resolve()
    env, opens = open_log_env(tmp_path, [ann, images])
    launcher = (TORCHRUN, "--standalone", "--nproc-per-node", "2", "--no-python")  # torchrun picks the port
    result = _run_cli(_dump_args(shapes_root, random_teacher, out), launcher=launcher, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_arrays(_arrays(out), _arrays(reference_store))
    assert not Path(f"{out}.lock").exists()
    # Pass 1 is spread over the ranks too: each computed the regions of its own 12 of the 24 blocks.
    said = " ".join(result.stderr.split())  # rich wraps lines at the terminal's width
    for rank in (0, 1):
        assert f"regions of 12 of 24 blocks from annotations (rank {rank}/2" in said, said[-2000:]

    # Rank 0 alone read the annotation file: once to parse it, once to hash it.
    logged = [line.split(" ", 2) for line in opens.read_text().splitlines()]
    assert [rank for _, rank, path in logged if path == str(ann)] == ["0", "0"], logged
    # Rank 1 opened no image but those of its own blocks (odd blocks of 2 images x 2 views) in
    # pass 2: the header check of every image ran on rank 0 only.
    group, _ = open_store(out)
    files = [bytes(row).rstrip(b"\0").decode() for row in group["image_files"][:]]
    opened_by = {rank: {os.path.relpath(path, images) for _, r, path in logged if r == rank and path != str(ann)}
                 for rank in "01"}
    assert opened_by["1"] == {files[i] for i in range(len(files)) if (i // 2) % 2 == 1}
    assert opened_by["0"] == set(files)


@pytest.mark.parametrize("change", ["dtype", "batch size", "image folder"])
def test_resume_with_other_options_is_refused(reference_store, shapes_root, random_teacher, tmp_path, change):
    out = tmp_path / "copy"
    shutil.copytree(reference_store, out)
    args = _dump_args(shapes_root, random_teacher, out, "--resume")
    if change == "dtype":
        args += ["--dtype", "fp32"]
    elif change == "batch size":
        args += ["--batch-size", "2"]  # GroupNorm sees a batch's padding: other values
    else:
        images = tmp_path / "images"
        shutil.copytree(shapes_root / "images/train", images)
        args[args.index("--img-dir") + 1] = str(images)
    result = _run_cli(args)
    assert result.returncode == 2 and "very same command" in result.stderr, result.stderr[-2000:]


def test_an_untrusted_teacher_pickle_is_refused_as_untrusted(shapes_root, tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = tmp_path / "teacher.pth"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": {}, "meta": Payload()}, f)
    result = _run_cli(_dump_args(shapes_root, evil, tmp_path / "s"))
    assert result.returncode == 2 and "refused as untrusted" in result.stderr, result.stderr[-2000:]
    assert "does not fit" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "pwned").exists()


def test_the_scan_parses_the_annotation_file_once(shapes_root, monkeypatch):
    import json as json_module

    from ldcache.dump.scan import scan_dataset

    parsed = []
    original = json_module.loads

    def spy(*args, **kwargs):  # json.load parses through json.loads too
        value = original(*args, **kwargs)
        if isinstance(value, dict) and "annotations" in value:
            parsed.append(value)
        return value

    monkeypatch.setattr(json_module, "loads", spy)
    scan = scan_dataset(shapes_root / "annotations/instances_train.json", shapes_root / "images/train",
                        ("star", "eff", "superstar"))
    assert len(scan.images) == 48 and len(parsed) == 1


def test_bad_inputs_give_one_line_errors(shapes_root, random_teacher, tmp_path):
    def missing_image(ann):
        ann["images"][3]["file_name"] = "nowhere.png"

    ann = _edited_dataset(shapes_root, tmp_path, missing_image)
    args = _dump_args(shapes_root, random_teacher, tmp_path / "s1")
    args[args.index("--ann-file") + 1] = str(ann)
    result = _run_cli(args)
    assert result.returncode == 2 and "missing" in result.stderr and "nowhere.png" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "s1").exists()

    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, wrong)
    result = _run_cli(_dump_args(shapes_root, wrong, tmp_path / "s2"))
    assert result.returncode == 2 and "does not fit" in result.stderr and "Traceback" not in result.stderr

    result = _run_cli(_dump_args(shapes_root, random_teacher, tmp_path / "s3")[:1] + [str(tmp_path / "none.pth")]
                      + _dump_args(shapes_root, random_teacher, tmp_path / "s3")[2:])
    assert result.returncode == 2 and "does not exist" in result.stderr

    result = _run_cli(_dump_args(shapes_root, random_teacher, tmp_path / "s4") + ["--region", "main",
                                                                                   "--vlr-metric", "diou"])
    said = " ".join(result.stderr.split())
    assert result.returncode == 2 and "--region main stores none" in said and "Traceback" not in said
    assert not (tmp_path / "s4").exists()


def _coco_corner_cases(ann):
    """Image 0 loses its boxes, image 1 keeps only a crowd box, image 2 only a box under 1 px, image 3
    gets an extra crowd box and a degenerate one beside its own: as COCO train2017 has them."""
    ids = [im["id"] for im in ann["images"]]
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] not in ids[:3]]
    extra = [(ids[1], [10, 10, 30, 30], 900, 1), (ids[2], [10, 10, 0.5, 30], 15, 0),
             (ids[3], [40, 40, 30, 30], 900, 1), (ids[3], [10, 10, 0, 30], 0, 0)]
    for k, (image_id, bbox, area, crowd) in enumerate(extra):
        ann["annotations"].append({"id": 10**6 + k, "image_id": image_id, "category_id": 1, "bbox": bbox,
                                   "area": area, "iscrowd": crowd})
    ann["images"] = ann["images"][:6]


def test_images_without_a_usable_box_are_stored_without_rows(shapes_root, random_teacher, tmp_path):
    ann = _edited_dataset(shapes_root, tmp_path, _coco_corner_cases)
    args = _dump_args(shapes_root, random_teacher, tmp_path / "s")
    args[args.index("--ann-file") + 1] = str(ann)
    # Blocks of 3: the first block holds only images without rows, and no teacher runs for it.
    result = _run_cli(args + ["--no-flip", "--block-size", "3"])
    assert result.returncode == 0, result.stderr[-3000:]
    reader = StoreReader(tmp_path / "s")
    summary = reader.attrs.summary
    assert summary.images == 6 and summary.images_without_boxes == 3
    assert reader.ptr[2, -1] == reader.ptr[0, 0] and reader.blocks.blocks_with_rows() == [1]
    assert not (tmp_path / "s" / "progress").exists(), "a finished store keeps no per-block bookkeeping"
    assert summary.ignored_crowd_boxes == 2 and summary.dropped_degenerate_boxes == 2
    ids = json.loads(ann.read_text())["images"]
    for index, image in enumerate(ids):
        targets = reader.read_record(reader.record_index(image["id"], 0))
        rows = sum(len(level.loc) for level in targets.levels())
        assert (rows == 0) == (index < 3), image
        assert (len(reader.gt_boxes(index)) == 0) == (index < 3)


def test_a_student_trains_on_images_whose_only_boxes_are_crowd_or_degenerate(shapes_root, random_teacher,
                                                                             tmp_path):
    """mmdet's filter_empty_gt keeps an image with only a crowd or a degenerate box; the store has it."""
    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules
    from mmengine.dataset import pseudo_collate

    import ldcache.train  # noqa: F401
    from conftest import cached_cfg
    from ldcache.train.check_hook import check_store_fits

    ann = _edited_dataset(shapes_root, tmp_path, _coco_corner_cases)
    store = tmp_path / "s"
    args = _dump_args(shapes_root, random_teacher, store)
    args[args.index("--ann-file") + 1] = str(ann)
    assert _run_cli(args).returncode == 0
    register_all_modules()
    cfg = cached_cfg(store)
    cfg.train_dataloader.dataset.update(ann_file=str(ann), data_prefix=dict(img=str(shapes_root / "images/train") + "/"),
                                        filter_cfg=dict(filter_empty_gt=True, min_size=32))
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    kept = {dataset.get_data_info(i)["img_id"] for i in range(len(dataset))}
    images = json.loads(ann.read_text())["images"]
    assert {images[1]["id"], images[2]["id"]} <= kept and images[0]["id"] not in kept
    model = MODELS.build(cfg.model)
    check_store_fits(StoreReader(store), str(ann), sorted(kept), model.bbox_head)
    samples = [dataset[i] for i in range(len(dataset)) if dataset.get_data_info(i)["img_id"] in
               (images[1]["id"], images[2]["id"], images[3]["id"])]
    batch = model.data_preprocessor(pseudo_collate(samples), True)
    losses = model.loss(batch["inputs"], batch["data_samples"])
    total = sum(sum(v) if isinstance(v, list) else v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total) and total > 0


def test_categories_that_are_not_the_teachers_classes_are_named_in_the_error(shapes_root, random_teacher,
                                                                             tmp_path):
    def rename(ann):
        for cat in ann["categories"]:
            cat["name"] = "person" + str(cat["id"])

    ann = _edited_dataset(shapes_root, tmp_path, rename)
    args = _dump_args(shapes_root, random_teacher, tmp_path / "s")
    args[args.index("--ann-file") + 1] = str(ann)
    result = _run_cli(args)
    assert result.returncode == 2 and "not the teacher's classes" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "s").exists()


def test_size_options_store_what_training_needs_and_readers_refuse_the_rest(reference_store, shapes_root,
                                                                           random_teacher, tmp_path):
    from mmdet.registry import MODELS
    from mmengine.config import Config

    import ldcache.train  # noqa: F401
    from ldcache.train.check_hook import check_store_fits
    from ldcache.store.format import FLAG_VLR_DIOU, FLAG_VLR_OFFICIAL

    out = tmp_path / "small"
    result = _run_cli(_dump_args(shapes_root, random_teacher, out, "--dtype", "q8", "--vlr-metric", "diou",
                                 "--no-vlr-class-logits"))
    assert result.returncode == 0, result.stderr[-3000:]
    small, full = StoreReader(out), StoreReader(reference_store)
    assert small.attrs.region.vlr_metrics == ("diou",)
    assert small.attrs.values.dtype == "q8" and not small.attrs.values.vlr_class_logits
    assert full.attrs.values.dtype == "fp16" and full.attrs.values.vlr_class_logits
    assert small.attrs.summary.bytes_on_disk < 0.7 * full.attrs.summary.bytes_on_disk
    edge_kl = []
    for record in range(8):
        for a, b in zip(small.read_record(record).levels(), full.read_record(record).levels()):
            kept = (b.flags & (FLAG_MAIN | FLAG_VLR_DIOU)) > 0
            assert np.array_equal(a.loc, b.loc[kept])
            assert np.array_equal(a.flags, b.flags[kept] & ~np.uint8(FLAG_VLR_OFFICIAL))
            assert np.all(a.vlr_ratio[:, 0] == 0) and np.array_equal(a.vlr_ratio[:, 1], b.vlr_ratio[kept, 1])
            main = (a.flags & FLAG_MAIN) > 0
            assert np.all(a.cls[~main] == 0)
            np.testing.assert_allclose(a.cls[main], b.cls[kept][main].astype(np.float32), atol=1e-3)
            exact = torch.from_numpy(b.reg[kept].astype(np.float64)) / 10
            stored = torch.from_numpy(a.reg.astype(np.float64)) / 10
            kl = torch.nn.functional.kl_div(stored.log_softmax(-1), exact.log_softmax(-1), log_target=True,
                                            reduction="none")
            edge_kl.append(kl.sum(-1).reshape(-1))
    assert torch.cat(edge_kl).mean() < 1e-5  # q8 edge distributions at T=10

    ids = [int(i) for i in small.image_ids]
    head_cfg = {**Config.fromfile(str(CONFIGS / "tiny/ld_r18_tiny_cached.py")).model.bbox_head, **PAPER_TERMS}
    check_store_fits(small, None, ids, MODELS.build({**head_cfg, "vlr_metric": "diou"}))
    check_store_fits(small, None, ids, MODELS.build({**head_cfg, "loss_ld_vlr": None}))  # no VLR term
    with pytest.raises(LDCacheError, match="re-dump with --vlr-metric official"):
        check_store_fits(small, None, ids, MODELS.build(head_cfg))
    kd_vlr = dict(type="KnowledgeDistillationKLDivLoss", loss_weight=10, T=2)
    with pytest.raises(LDCacheError, match="Main rows only"):
        check_store_fits(small, None, ids, MODELS.build({**head_cfg, "vlr_metric": "diou", "loss_kd_vlr": kd_vlr}))
    result = _run_cli(_dump_args(shapes_root, random_teacher, tmp_path / "bad", "--vlr-metric", "giou"))
    assert result.returncode == 2 and "--vlr-metric must name" in result.stderr

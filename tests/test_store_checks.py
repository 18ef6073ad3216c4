"""What cached-LD training refuses before it trains on the wrong targets, and what it reports after."""
import dataclasses
from types import SimpleNamespace

import pytest

from conftest import PAPER_TERMS, cached_cfg
from ldcache.errors import StoreMismatchError


def _reader_with_region(store, **region):
    """The store's reader as the hook sees it, with the region attributes another dump would record."""
    from ldcache.store.reader import StoreReader

    reader = StoreReader(store)
    attrs = dataclasses.replace(reader.attrs, region=dataclasses.replace(reader.attrs.region, **region))
    return SimpleNamespace(path=reader.path, attrs=attrs, image_ids=reader.image_ids)


def _head(store, **options):
    from mmdet.registry import MODELS

    import ldcache.train  # noqa: F401

    return MODELS.build(cached_cfg(store, **options).model.bbox_head)


@pytest.mark.parametrize("mode,reason", [("dense", "every location has a row, but its VLR weight is kept only"),
                                         ("distill", "its VLR rows start at gamma 0.5")])
def test_vlr_below_the_stores_gamma_is_refused_in_either_region_mode(shapes_store, mode, reason):
    from ldcache.train.check_hook import check_store_fits

    reader = _reader_with_region(shapes_store, mode=mode, gamma=0.5)
    ids = [int(i) for i in reader.image_ids]
    with pytest.raises(StoreMismatchError, match=f"{reason}.*Re-dump with --gamma 0.25, or set "
                                                 "model.bbox_head.vlr_gamma to 0.5 or above"):
        check_store_fits(reader, None, ids, _head(shapes_store, **PAPER_TERMS, vlr_gamma=0.25))
    for gamma in (0.5, 0.6):  # at or above the store's: the rows and weights are exact
        check_store_fits(reader, None, ids, _head(shapes_store, **PAPER_TERMS, vlr_gamma=gamma))


def test_a_gamma_below_the_stores_is_refused_only_where_it_is_used(shapes_store):
    from ldcache.train.check_hook import check_store_fits

    ids = [int(i) for i in _reader_with_region(shapes_store).image_ids]
    # Main terms only: the gamma is never read.
    main_only = _head(shapes_store, loss_ld_vlr=None, loss_kd_vlr=None, vlr_gamma=0.25)
    for mode in ("dense", "distill"):
        check_store_fits(_reader_with_region(shapes_store, mode=mode, gamma=0.5), None, ids, main_only)
    # VLR KD reads membership only, which a dense store's ratio gives at any gamma; a distill
    # store lacks the rows.
    vlr_kd = _head(shapes_store, loss_ld_vlr=None, loss_kd_vlr=PAPER_TERMS["loss_kd"], vlr_gamma=0.25)
    check_store_fits(_reader_with_region(shapes_store, mode="dense", gamma=0.5), None, ids, vlr_kd)
    with pytest.raises(StoreMismatchError, match="VLR rows start at gamma 0.5"):
        check_store_fits(_reader_with_region(shapes_store, mode="distill", gamma=0.5), None, ids, vlr_kd)


def _set_flip(direction, prob):
    def edit(cfg):
        for step in cfg.train_dataloader.dataset.pipeline:
            if step["type"] == "RandomFlip":
                step.update(direction=direction, prob=prob)
    return edit


def _set(path: str, value):
    def edit(cfg):
        cfg.merge_from_dict({path: value})
    return edit


def _checked_runner(store, work_dir, edit=None):
    """Build the tiny cached-LD student's runner, edited, and run the hook's checks on it."""
    from mmengine.registry import RUNNERS

    from ldcache.train.check_hook import LDCacheCheckHook

    cfg = cached_cfg(store, flip=0.5)
    cfg.work_dir = str(work_dir)
    if edit is not None:
        edit(cfg)
    runner = RUNNERS.build(cfg)
    runner.train_loop  # builds the train dataloader, whose dataset the hook reads
    LDCacheCheckHook().before_train(runner)


@pytest.mark.parametrize("edit", [None, _set_flip("vertical", 0.0), _set_flip("horizontal", 1.0)],
                         ids=["as_dumped", "vertical_never_flips", "always_horizontal"])
def test_a_student_that_pads_and_flips_as_the_dump_did_passes(shapes_store, shapes_root, tmp_path, edit):
    _checked_runner(shapes_store, tmp_path, edit)


@pytest.mark.parametrize("edit,message", [
    (_set("model.data_preprocessor.pad_size_divisor", 64),
     r"pads its images to a multiple of 64 \(model.data_preprocessor.pad_size_divisor\).*padded to a multiple of "
     "32: set model.data_preprocessor.pad_size_divisor=32"),
    (_set("model.train_cfg.allowed_border", 0),
     "allowed_border: store -1 vs student 0, set by model.train_cfg.allowed_border"),
    (_set_flip("vertical", 0.5),
     "RandomFlip flips with direction 'vertical'.*horizontal flips: set direction='horizontal'.*or prob=0"),
    (_set_flip("diagonal", 0.5), "RandomFlip flips with direction 'diagonal'"),
    (_set_flip(["horizontal", "vertical"], 0.5),
     r"RandomFlip flips with direction \['horizontal', 'vertical'\]"),
], ids=["pad_size_divisor", "allowed_border", "vertical", "diagonal", "list"])
def test_a_student_that_pads_or_flips_otherwise_is_refused_by_the_hook(shapes_store, shapes_root, tmp_path,
                                                                       edit, message):
    with pytest.raises(StoreMismatchError, match=message):
        _checked_runner(shapes_store, tmp_path, edit)


@pytest.mark.parametrize("direction", ["horizontal", "vertical"])
def test_load_ld_targets_refuses_a_sample_flipped_otherwise_than_the_store(shapes_store, shapes_root, direction):
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    import ldcache.train  # noqa: F401

    register_all_modules()
    cfg = cached_cfg(shapes_store)
    _set_flip(direction, 1.0)(cfg)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    if direction == "horizontal":
        assert dataset[0]["data_samples"].ld_targets is not None
        return
    with pytest.raises(StoreMismatchError, match=r"flipped it with flip_direction 'vertical', but the flipped "
                                                 "views of store .* are horizontal flips. Set direction='horizontal'"):
        dataset[0]


class _CopyInFlight:
    """A CUDA event's stand-in: the counts' copy completes only once it is waited for."""

    def __init__(self):
        self.done = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.done = True


@pytest.mark.parametrize("topk,fits", [(9, True), (30, False)])
def test_a_positive_without_a_row_in_the_last_step_is_reported_after_the_epoch(shapes_store, shapes_root,
                                                                               monkeypatch, topk, fits):
    """As on a GPU, the step's counts are still on their way when the step ends; the hook waits
    for them after the epoch, and the rank reports its own (here rank 1 of 2)."""
    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules
    from mmengine.dataset import pseudo_collate

    from ldcache.train import cached_ld
    from ldcache.train.check_hook import LDCacheCheckHook

    register_all_modules()
    cfg = cached_cfg(shapes_store)
    cfg.model.train_cfg.assigner.topk = topk  # 30 against the store's 9: positives the store has no row for
    student = MODELS.build(cfg.model)
    batch = student.data_preprocessor(pseudo_collate([DATASETS.build(cfg.train_dataloader.dataset)[0]]), True)
    monkeypatch.setattr(cached_ld, "_counts_to_host",
                        lambda counts: cached_ld._PendingCounts(counts, _CopyInFlight()))
    monkeypatch.setattr(cached_ld, "get_dist_info", lambda: (1, 2))
    student.loss(batch["inputs"], batch["data_samples"])  # the run's last step: nothing reported yet
    assert len(student.bbox_head._pending_counts) == 1
    hook, runner = LDCacheCheckHook(), SimpleNamespace(model=student)
    if fits:
        hook.after_train_epoch(runner)
    else:
        with pytest.raises(StoreMismatchError, match=r"^rank 1 of 2: \d+ ATSS positive location\(s\) of the "
                                                     "student had no cached teacher row"):
            hook.after_train_epoch(runner)
    assert not student.bbox_head._pending_counts

"""LDCacheCheckHook: before training, check once that the store fits the dataset and the student;
after each epoch, report the row checks the head still had on their way from the GPU."""
from __future__ import annotations

from mmcv.transforms import RandomFlip
from mmdet.registry import HOOKS
from mmengine.hooks import Hook

from ..digest import file_sha256
from ..domain.classes import classes_difference
from ..domain.head import head_mismatch, vlr_terms
from ..domain.region_rule import region_rule, rule_mismatch, stored_rule
from ..domain.ld_config import flip_probability
from ..errors import BadInputError, StoreMismatchError
from ..store.attrs import HeadGeometry, RegionAttrs
from ..store.reader import StoreReader
from .cached_ld import CachedLD
from .load_ld_targets import LoadLDTargets


def ld_stores_in_pipeline(pipeline) -> list[str]:
    """Store paths named by LoadLDTargets steps of a dataset pipeline (configs or built)."""
    stores = []
    for step in getattr(pipeline, "transforms", pipeline) or []:
        if isinstance(step, LoadLDTargets):
            stores.append(step.store)
        elif isinstance(step, dict) and step.get("type") == "LoadLDTargets":
            stores.append(str(step["store"]))
    return stores


def gamma_mismatch(region: RegionAttrs, vlr_gamma: float, losses: dict) -> str | None:
    """Why the store cannot serve the VLR terms at `vlr_gamma`, or None when it can.

    Below the store's gamma, a distill store lacks the VLR rows, and any store lacks the VLR
    weights: a row keeps the weight steps of the GTs it is VLR for at the store's gamma only."""
    if vlr_gamma >= region.gamma:
        return None
    if region.mode == "distill" and vlr_terms(losses):
        return (f"vlr_gamma {vlr_gamma} is below the store's {region.gamma}: its VLR rows start at gamma "
                f"{region.gamma}. Re-dump with --gamma {vlr_gamma}, or set model.bbox_head.vlr_gamma to "
                f"{region.gamma} or above")
    if losses.get("loss_ld_vlr") is not None:
        return (f"vlr_gamma {vlr_gamma} is below the store's {region.gamma}: every location has a row, but its VLR "
                f"weight is kept only for gammas at or above {region.gamma}. Re-dump with --gamma {vlr_gamma}, "
                f"or set model.bbox_head.vlr_gamma to {region.gamma} or above")
    return None


def check_store_fits(reader: StoreReader, ann_file: str | None, image_ids, head, classes=None) -> None:
    """Refuse, with the reason, a store made for another dataset, head geometry or assignment.

    `classes`: the class names of the student's train dataset (its metainfo), checked first and by
    name: a store of other classes would otherwise be refused for its annotation file or head."""
    attrs = reader.attrs
    difference = classes_difference(attrs.dataset.classes, classes, first_has="it holds a teacher's logits for",
                                    second_has="the student's dataset has", first_name="the store",
                                    second_name="the student's dataset")
    if difference:
        raise StoreMismatchError(f"store {reader.path}: {difference}. Train on the store's classes, in its order "
                                 "(train_dataloader.dataset.metainfo.classes), or dump a teacher trained on the "
                                 "student's classes (docs/own-dataset.md)")
    if ann_file is not None and file_sha256(ann_file) != attrs.dataset.ann_sha256:
        raise StoreMismatchError(f"store {reader.path} was dumped from {attrs.dataset.ann_file}, whose content "
                                 f"differs from the training annotation file {ann_file} (sha256 mismatch)")
    missing = sorted(set(int(i) for i in image_ids) - set(int(i) for i in reader.image_ids))
    if missing:
        raise StoreMismatchError(f"{len(missing)} training image id(s) are not in store {reader.path}, e.g. "
                                 f"{missing[:5]}; the store was dumped for another image set")
    mismatch = head_mismatch(attrs.head, HeadGeometry.of_head(head))
    if mismatch:
        raise StoreMismatchError(f"the student head does not match the head of store {reader.path}'s teacher "
                                 f"({mismatch}): give the student the store's values, or re-dump with a teacher "
                                 "config of the student's")
    region = attrs.region
    mismatch = rule_mismatch(stored_rule(region), region_rule(head))
    if mismatch:
        raise StoreMismatchError(f"the student's regions differ from those of store {reader.path} ({mismatch}): "
                                 "give the student the store's settings, or re-dump with an LD config of this "
                                 "student (`ldcache dump-teacher LD_CONFIG`), which takes the student's rules")
    losses = getattr(head, "ld_losses", {})
    terms = vlr_terms(losses)
    if terms and region.mode == "main":
        raise StoreMismatchError(f"store {reader.path} holds Main rows only (dumped with --region main), but the "
                                 f"student's VLR terms ({', '.join(terms)}) need VLR rows: set "
                                 f"{' and '.join(f'model.bbox_head.{t}=None' for t in terms)}, or dump with "
                                 "--region distill")
    if terms and head.vlr_metric not in region.vlr_metrics:
        raise StoreMismatchError(f"vlr_metric {head.vlr_metric!r} is not in store {reader.path} (it holds "
                                 f"{list(region.vlr_metrics)}): set model.bbox_head.vlr_metric to one of those, "
                                 f"or re-dump with --vlr-metric {head.vlr_metric}")
    if losses.get("loss_kd_vlr") is not None and not attrs.values.vlr_class_logits:
        raise StoreMismatchError(f"VLR KD needs class logits on VLR rows, but store {reader.path} holds them on "
                                 "Main rows only (dumped with --no-vlr-class-logits); re-dump without it, or set "
                                 "model.bbox_head.loss_kd_vlr=None")
    mismatch = gamma_mismatch(region, getattr(head, "vlr_gamma", region.gamma), losses)
    if mismatch:
        raise StoreMismatchError(f"store {reader.path} ({region.mode}): {mismatch}")


def check_pipeline_fits(reader: StoreReader, pipeline, data_preprocessor) -> None:
    """Refuse, with the reason, a student that pads or flips its images otherwise than the dump did.

    The rows lie on the grid of the image padded to the store's divisor (which anchors are valid,
    and where each row sits), and a flipped view is mirrored left-right."""
    grid = reader.attrs.grid
    # mmengine's base preprocessor does not pad.
    divisor = int(getattr(data_preprocessor, "pad_size_divisor", 1))
    if divisor != grid.pad_divisor:
        raise StoreMismatchError(f"the student pads its images to a multiple of {divisor} "
                                 f"(model.data_preprocessor.pad_size_divisor), but store {reader.path} holds rows "
                                 f"on images padded to a multiple of {grid.pad_divisor}: set "
                                 f"model.data_preprocessor.pad_size_divisor={grid.pad_divisor}")
    for step in getattr(pipeline, "transforms", pipeline) or []:
        if (isinstance(step, RandomFlip) and flip_probability(step.prob) > 0
                and step.direction != grid.flip_direction):
            raise StoreMismatchError(f"the train pipeline's RandomFlip flips with direction {step.direction!r}, "
                                     f"but the flipped views of store {reader.path} are {grid.flip_direction} "
                                     f"flips: set direction='{grid.flip_direction}' (mmdet's default) in "
                                     "RandomFlip, or prob=0")


def _model(runner):
    return runner.model.module if hasattr(runner.model, "module") else runner.model


@HOOKS.register_module()
class LDCacheCheckHook(Hook):
    """Runs the store checks before the first iteration, so that a mismatch fails in seconds, and
    after each epoch reports what the head found in the epoch's last steps.

    On a GPU, CachedLDHead counts the positives without a teacher row of each step on the device
    and reports them once the count has reached the host, at a later step; after an epoch no later
    step comes, so this hook waits for the counts still on their way. Every rank reports its own.
    """

    priority = "VERY_HIGH"

    def before_train(self, runner) -> None:
        dataset = runner.train_dataloader.dataset
        while hasattr(dataset, "dataset"):  # RepeatDataset, ClassBalancedDataset, ...
            dataset = dataset.dataset
        model = _model(runner)
        stores = ld_stores_in_pipeline(dataset.pipeline)
        if not stores:
            raise BadInputError("LDCacheCheckHook: the train pipeline has no LoadLDTargets step")
        image_ids = [dataset.get_data_info(i)["img_id"] for i in range(len(dataset))]
        for store in stores:
            reader = StoreReader(store)
            check_store_fits(reader, dataset.ann_file, image_ids, model.bbox_head,
                             (getattr(dataset, "metainfo", None) or {}).get("classes"))
            check_pipeline_fits(reader, dataset.pipeline, model.data_preprocessor)

    def after_train_epoch(self, runner) -> None:
        head = _model(runner).bbox_head
        if isinstance(head, CachedLD):
            head.report_pending_row_checks()

"""LDCacheCheckHook: before training, check once that the store fits the dataset and the student."""
from __future__ import annotations

import dataclasses

from mmdet.registry import HOOKS
from mmengine.hooks import Hook

from ..digest import file_sha256
from ..errors import BadInputError, StoreMismatchError
from ..store.attrs import HeadGeometry
from ..store.reader import StoreReader
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


def check_store_fits(reader: StoreReader, ann_file: str | None, image_ids, head) -> None:
    """Refuse, with the reason, a store made for another dataset, head geometry or assignment."""
    attrs = reader.attrs
    if ann_file is not None and file_sha256(ann_file) != attrs.dataset.ann_sha256:
        raise StoreMismatchError(f"store {reader.path} was dumped from {attrs.dataset.ann_file}, whose content "
                                 f"differs from the training annotation file {ann_file} (sha256 mismatch)")
    missing = sorted(set(int(i) for i in image_ids) - set(int(i) for i in reader.image_ids))
    if missing:
        raise StoreMismatchError(f"{len(missing)} training image id(s) are not in store {reader.path}, e.g. "
                                 f"{missing[:5]}; the store was dumped for another image set")
    student, teacher = dataclasses.asdict(HeadGeometry.of_head(head)), dataclasses.asdict(attrs.head)
    different = {k: (teacher[k], student[k]) for k in teacher if teacher[k] != student[k]}
    if different:
        detail = "; ".join(f"{k}: store {a} vs student {b}" for k, (a, b) in different.items())
        raise StoreMismatchError(f"student head does not match the store's teacher head ({detail})")
    region = attrs.region
    assigner = getattr(head, "assigner", None)
    if assigner is not None and getattr(assigner, "topk", region.topk) != region.topk:
        raise StoreMismatchError(f"the student's ATSS assigner uses topk {assigner.topk} but store {reader.path} "
                                 f"holds the Main region of topk {region.topk}; set model.train_cfg.assigner.topk="
                                 f"{region.topk}, or re-dump with a teacher config whose assigner has topk "
                                 f"{assigner.topk}")
    losses = getattr(head, "ld_losses", {})
    uses_vlr = losses.get("loss_ld_vlr") is not None or losses.get("loss_kd_vlr") is not None
    if uses_vlr and head.vlr_metric not in region.vlr_metrics:
        raise StoreMismatchError(f"vlr_metric {head.vlr_metric!r} is not in store {reader.path} (it holds "
                                 f"{list(region.vlr_metrics)}): set model.bbox_head.vlr_metric to one of those, "
                                 f"or re-dump with --vlr-metric {head.vlr_metric}")
    if losses.get("loss_kd_vlr") is not None and not attrs.values.vlr_class_logits:
        raise StoreMismatchError(f"VLR KD needs class logits on VLR rows, but store {reader.path} holds them on "
                                 "Main rows only (dumped with --no-vlr-class-logits); re-dump without it, or set "
                                 "model.bbox_head.loss_kd_vlr=None")
    if region.mode == "distill" and getattr(head, "vlr_gamma", region.gamma) < region.gamma:
        raise StoreMismatchError(f"vlr_gamma {head.vlr_gamma} is below the store's {region.gamma}: its VLR rows "
                                 f"start at gamma {region.gamma}. Re-dump with --gamma {head.vlr_gamma} "
                                 "(or --region dense)")


@HOOKS.register_module()
class LDCacheCheckHook(Hook):
    """Runs the store checks before the first iteration, so a mismatch fails in seconds."""

    priority = "VERY_HIGH"

    def before_train(self, runner) -> None:
        dataset = runner.train_dataloader.dataset
        while hasattr(dataset, "dataset"):  # RepeatDataset, ClassBalancedDataset, ...
            dataset = dataset.dataset
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        stores = ld_stores_in_pipeline(dataset.pipeline)
        if not stores:
            raise BadInputError("LDCacheCheckHook: the train pipeline has no LoadLDTargets step")
        image_ids = [dataset.get_data_info(i)["img_id"] for i in range(len(dataset))]
        for store in stores:
            check_store_fits(StoreReader(store), dataset.ann_file, image_ids, model.bbox_head)

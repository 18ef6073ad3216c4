"""LDCacheCheckHook: before training, check once that the store fits the dataset and the student."""
from __future__ import annotations

from mmengine.hooks import Hook
from mmdet.registry import HOOKS

from .errors import LDCacheError
from .load_ld_targets import LoadLDTargets
from .store import StoreReader
from .teacher import file_sha256, head_geometry


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
    """Refuse, with the reason, a store made for another dataset or another head geometry."""
    dataset = reader.attrs["dataset"]
    if ann_file is not None and file_sha256(ann_file) != dataset["ann_sha256"]:
        raise LDCacheError(f"store {reader.path} was dumped from {dataset['ann_file']}, whose content differs "
                           f"from the training annotation file {ann_file} (sha256 mismatch)")
    missing = sorted(set(int(i) for i in image_ids) - set(int(i) for i in reader.image_ids))
    if missing:
        raise LDCacheError(f"{len(missing)} training image id(s) are not in store {reader.path}, e.g. "
                           f"{missing[:5]}; the store was dumped for another image set")
    student, teacher = head_geometry(head), reader.attrs["head"]
    different = {k: (teacher[k], student[k]) for k in teacher if k in student and teacher[k] != student[k]}
    if different:
        detail = "; ".join(f"{k}: store {a} vs student {b}" for k, (a, b) in different.items())
        raise LDCacheError(f"student head does not match the store's teacher head ({detail})")
    region = reader.attrs["region"]
    losses = getattr(head, "ld_losses", {})
    uses_vlr = losses.get("loss_ld_vlr") is not None or losses.get("loss_kd_vlr") is not None
    if uses_vlr and head.vlr_metric not in region["vlr_metrics"]:
        raise LDCacheError(f"vlr_metric {head.vlr_metric!r} is not in store {reader.path} (it holds "
                           f"{region['vlr_metrics']}): set model.bbox_head.vlr_metric to one of those, or "
                           f"re-dump with --vlr-metric {head.vlr_metric}")
    if losses.get("loss_kd_vlr") is not None and reader.attrs["values"]["class_logits"] != "all rows":
        raise LDCacheError(f"VLR KD needs class logits on VLR rows, but store {reader.path} holds them on "
                           "Main rows only (dumped with --no-vlr-class-logits); re-dump without it, or set "
                           "model.bbox_head.loss_kd_vlr=None")
    if region["mode"] == "distill" and getattr(head, "vlr_gamma", region["gamma"]) < region["gamma"]:
        raise LDCacheError(f"vlr_gamma {head.vlr_gamma} is below the store's {region['gamma']}: its VLR rows "
                           f"start at gamma {region['gamma']}. Re-dump with --gamma {head.vlr_gamma} "
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
            raise LDCacheError("LDCacheCheckHook: the train pipeline has no LoadLDTargets step")
        image_ids = [dataset.get_data_info(i)["img_id"] for i in range(len(dataset))]
        for store in stores:
            check_store_fits(StoreReader(store), dataset.ann_file, image_ids, model.bbox_head)

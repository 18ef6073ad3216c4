"""mmdet's LD configs, trained by ldcache: the same student, its teacher's outputs from a store
(cached) or from the live teacher through the same loss code (online).

An mmdet LD config builds ``KnowledgeDistillationSingleStageDetector`` (the student plus a teacher
run at every step) with an ``LDHead`` student head (Main LD only). ldcache turns it into a plain
GFL detector whose head is :class:`CachedLDHead` with the same terms and normalisation as
``LDHead``: Main LD with the config's ``loss_ld``, divided by 4, no VLR LD, no KD, and the box
losses divided by the sum of their weights plus 1e-6 (LDHead's, where GFLHead floors it at 1).
"""
from __future__ import annotations

from mmengine.config import Config, ConfigDict

from ..domain.ld_config import is_ld_config, teacher_checkpoint, teacher_config_file, train_dataset
from ..errors import BadInputError
from .cached_ld import CachedLD

LD_DETECTOR_KEYS = ("teacher_config", "teacher_ckpt", "eval_teacher")
# LDHead's LD terms, as CachedLDHead names and normalises them.
LD_HEAD_TERMS = dict(loss_ld_vlr=None, loss_kd=None, loss_kd_vlr=None, normalize="official", bbox_norm="ld_head")


def as_cached_student(cfg: Config, store: str) -> list[str]:
    """Edit an mmdet LD config in place to train its student from `store`; returns what changed,
    a line each."""
    changes = _as_student(cfg, "GFL")
    pipeline = train_dataset(cfg).pipeline
    packs = [i for i, step in enumerate(pipeline) if step.get("type") == "PackDetInputs"]
    if not packs:
        raise BadInputError(f"{cfg.filename}: its train pipeline has no PackDetInputs step, after which the "
                            "cached targets are loaded")
    pipeline.insert(packs[-1] + 1, dict(type="LoadLDTargets", store=str(store)))
    cfg.custom_hooks = [*cfg.get("custom_hooks", []), dict(type="LDCacheCheckHook")]
    return [*changes, f"train pipeline: + LoadLDTargets(store={store}) after PackDetInputs",
            "custom_hooks: + LDCacheCheckHook (the store is checked against the data and the student first)"]


def as_online_student(cfg: Config, checkpoint: str | None = None) -> list[str]:
    """Edit an mmdet LD config in place to train its student with the live teacher through
    CachedLDHead's loss code (``checkpoint`` instead of the config's ``teacher_ckpt``)."""
    teacher_config, teacher_ckpt = teacher_config_file(cfg), teacher_checkpoint(cfg, checkpoint)
    changes = _as_student(cfg, "OnlineLDGFL")
    cfg.model.update(teacher_config=str(teacher_config), teacher_ckpt=str(teacher_ckpt))
    return [*changes, f"teacher: {teacher_config} with {teacher_ckpt}, run at every step"]


def as_plain_student(cfg: Config) -> list[str]:
    """Edit an mmdet LD config in place to build its student alone, with no teacher (to evaluate it)."""
    return _as_student(cfg, "GFL")


def _as_student(cfg: Config, detector: str) -> list[str]:
    if not is_ld_config(cfg):
        raise BadInputError(f"{cfg.filename} is not an LD config (its model has no teacher_config)")
    model = cfg.model
    head = model.bbox_head
    changes = [f"model: {model.type} -> {detector}" + (" (no teacher built)" if detector == "GFL" else "")]
    if head.type == "LDHead":
        loss_ld = head.get("loss_ld")
        cached = {k: v for k, v in head.items() if k not in ("type", "loss_ld")}
        # The config's own settings (and --cfg-options given for the cached head) over LDHead's terms.
        model.bbox_head = ConfigDict(type="CachedLDHead", **{**LD_HEAD_TERMS, **cached},
                                     **({"loss_ld": loss_ld} if loss_ld else {}))
        changes.append(f"bbox_head: LDHead -> CachedLDHead, LDHead's terms and normalisation (Main LD "
                       f"{_describe(model.bbox_head.get('loss_ld'))} / 4; no VLR LD, no KD)")
    elif not is_cached_ld_head(head.type):
        raise BadInputError(f"{cfg.filename}: the student's head is {head.type}; ldcache distils edge "
                            "distributions through LDHead (mmdet's LD configs) or a cached-LD head (CachedLDHead, "
                            "CachedLDATSSHead, CachedLDGFLv2Head)")
    model.type = detector
    for key in LD_DETECTOR_KEYS:
        model.pop(key, None)
    imports = list((cfg.get("custom_imports") or {}).get("imports", []))
    if "ldcache.train" not in imports:
        cfg.custom_imports = dict(imports=[*imports, "ldcache.train"], allow_failed_imports=False)
    if cfg.get("runner_type") is None:
        cfg.runner_type = "LDCacheRunner"
        changes.append("runner: LDCacheRunner (mmengine's Runner; it signs its checkpoints to resume from them)")
    return changes


def is_cached_ld_head(name: str) -> bool:
    """Whether a registered head type carries ldcache's LD terms (a CachedLD head of any family)."""
    from mmdet.registry import MODELS

    head = MODELS.get(name)
    return head is not None and issubclass(head, CachedLD)


def _describe(loss: dict | None) -> str:
    """'weight 0.25, T 10' of a KnowledgeDistillationKLDivLoss config."""
    if not loss:
        return "(CachedLDHead's default)"
    return f"weight {loss.get('loss_weight', 1.0)}, T {loss.get('T', 10)}"

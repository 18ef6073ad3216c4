"""Turn a cached-LD student config into a Runner: from a store, or online with a live teacher."""
from __future__ import annotations

from pathlib import Path

from mmengine.config import Config, ConfigDict

from .. import checkpoint_trust
from ..errors import BadInputError
from ..domain.ld_config import is_ld_config, train_dataset
from .check_hook import ld_stores_in_pipeline
from .mmdet_ld import as_cached_student, as_online_student, is_cached_ld_head
from .runner import runner_from_config


def _train_pipelines(cfg: Config) -> list[list]:
    """The pipelines of the train dataset, through dataset wrappers."""
    return [train_dataset(cfg).pipeline]


def use_cache(cfg: Config, store: str) -> None:
    """Point every LoadLDTargets step of the train pipeline at `store`."""
    found = False
    for pipeline in _train_pipelines(cfg):
        for step in pipeline:
            if step.get("type") == "LoadLDTargets":
                step["store"] = str(store)
                found = True
    if not found:
        raise BadInputError(f"{cfg.filename} has no LoadLDTargets step in its train pipeline: it is not a "
                           "cached-LD config (see configs/tiny/ld_r18_tiny_cached.py)")


def use_online_teacher(cfg: Config, teacher_config: Path, teacher_ckpt: Path) -> None:
    """Turn a cached-LD config into online LD: same head and losses, targets from a live teacher."""
    if not is_cached_ld_head(cfg.model.bbox_head.get("type")):
        raise BadInputError(f"{cfg.filename} does not use a cached-LD head (CachedLDHead, CachedLDATSSHead); "
                            "online LD runs through its losses")
    for pipeline in _train_pipelines(cfg):
        pipeline[:] = [step for step in pipeline if step.get("type") != "LoadLDTargets"]
    cfg.custom_hooks = [h for h in cfg.get("custom_hooks", []) if h.get("type") != "LDCacheCheckHook"]
    cfg.model = ConfigDict({**cfg.model, "type": "OnlineLDGFL", "teacher_config": str(teacher_config),
                            "teacher_ckpt": str(teacher_ckpt)})


def student_and_online_twin(cfg: Config, teacher_config: Path, teacher_ckpt: Path,
                            student_ckpt: Path | None = None):
    """The cached-LD student model of `cfg` (from `student_ckpt`, else initialised) and its online
    twin: the same weights, its targets from the live teacher. For comparing the two paths on one batch."""
    import copy

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.runner import load_checkpoint

    register_all_modules()
    # No runner installs it here: the student's checkpoint (one our runner signed) and the online
    # teacher's go through ldcache's trust check all the same.
    checkpoint_trust.install()
    student = MODELS.build(cfg.model)
    if student_ckpt is None:
        student.init_weights()
    else:
        load_checkpoint(student, str(student_ckpt), map_location="cpu", logger="silent")
    online_cfg = copy.deepcopy(cfg)
    use_online_teacher(online_cfg, teacher_config, teacher_ckpt)
    online = MODELS.build(online_cfg.model)
    online.load_state_dict(student.state_dict())
    return student, online


def build_student_runner(config: str | Path, cache: str | Path | None = None, teacher: tuple[Path, Path] | None = None,
                         work_dir: Path | None = None, cfg_options: dict | None = None, resume: bool = False,
                         online: bool = False, teacher_ckpt: str | None = None, report=None):
    """The mmengine Runner of a student config, after `cfg_options` are merged.

    A cached-LD config reads `cache` (or its own store), or trains online with `teacher` =
    (config, checkpoint). An mmdet LD config (``mmdet::ld/...`` or one inheriting it) is turned
    into cached LD from `cache`, or, with `online`, into online LD with its own teacher
    (`teacher_ckpt` instead of its ``teacher_ckpt``); `report(lines)` is given what changed."""
    def prepare(cfg: Config) -> None:
        if is_ld_config(cfg):
            if teacher is not None:
                raise BadInputError(f"{cfg.filename} is an LD config: it names its teacher; train it online with "
                                    "--online (and --teacher-ckpt PATH for another checkpoint)")
            if online:
                changes = as_online_student(cfg, teacher_ckpt)
            elif cache is not None:
                changes = as_cached_student(cfg, str(cache))
            else:
                raise BadInputError("give --cache STORE (cached LD) or --online (LD with the config's live teacher)")
            if report is not None:
                report([f"{cfg.filename}, an mmdet LD config, trained with ldcache:", *(f"  {c}" for c in changes)])
        elif online and teacher is None:
            raise BadInputError(f"{cfg.filename} names no teacher (it is not an LD config): give --teacher CONFIG CKPT")
        elif teacher is not None:
            use_online_teacher(cfg, *teacher)
        elif cache is not None:
            use_cache(cfg, str(cache))
        elif not any(ld_stores_in_pipeline(p) for p in _train_pipelines(cfg)):
            raise BadInputError("give --cache STORE (cached LD) or --teacher CONFIG CKPT (online LD)")

    return runner_from_config(config, work_dir, cfg_options, resume=resume, prepare=prepare)

"""mmengine Runner that signs the checkpoints it writes, so that it may resume from them safely."""
from __future__ import annotations

from pathlib import Path

from mmengine.dist import master_only
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from .checkpoint_trust import sign_checkpoint


@RUNNERS.register_module()
class LDCacheRunner(Runner):
    """A Runner whose checkpoints are trusted on resume (see ``ldcache.checkpoint_trust``).

    Use it with ``runner_type = 'LDCacheRunner'`` in a config; everything else is mmengine's.
    """

    @master_only
    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        super().save_checkpoint(out_dir, filename, *args, **kwargs)
        path = Path(out_dir) / filename
        # Remote backends (no local file) keep mmengine's behaviour.
        if path.is_file():
            sign_checkpoint(path)


def runner_from_config(config: str | Path, work_dir: str | Path | None = None,
                       cfg_options: dict | None = None, resume: bool = False) -> Runner:
    """Build the Runner a config asks for (``runner_type``), as mmdet's tools/train.py does."""
    from mmengine.config import Config

    from .errors import LDCacheError

    if not Path(config).is_file():
        raise LDCacheError(f"config file {config} does not exist")
    cfg = Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.work_dir = str(work_dir) if work_dir else cfg.get(
        "work_dir", str(Path("work_dirs") / Path(config).stem))
    cfg.resume = resume
    if "runner_type" in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)

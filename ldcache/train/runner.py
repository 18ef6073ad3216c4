"""mmengine Runner that signs the checkpoints it writes, so that it may resume from them safely, and
the setup of mmengine and mmcv it installs when built."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from mmengine.dist import master_only
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from .. import checkpoint_trust
from ..checkpoint_trust import SIGNATURE_SUFFIX, sign_checkpoint
from ..domain.ld_config import load_config
from .nms import route_cuda_nms_to_torchvision
from .random_state_hook import RandomStateHook


def install() -> None:
    """Set up mmengine and mmcv as ldcache's runs need them; ``LDCacheRunner`` does it when built.

    mmengine then loads local checkpoints through ``ldcache.checkpoint_trust`` (signed files in
    full, every other file weights-only), and mmcv's NMS sends CUDA tensors to torchvision when
    mmcv has no CUDA ops (``ldcache.train.nms``). Importing ldcache changes neither library; call
    this before building a plain mmengine Runner, a model with an online teacher, or loading a
    checkpoint outside a runner. Idempotent.
    """
    checkpoint_trust.install()
    route_cuda_nms_to_torchvision()


@RUNNERS.register_module()
class LDCacheRunner(Runner):
    """A Runner whose checkpoints are trusted on resume (see ``ldcache.checkpoint_trust``) and
    carry the random states, so that a resumed run continues as the uninterrupted one would have
    (``RandomStateHook``).

    Use it with ``runner_type = 'LDCacheRunner'`` in a config; everything else is mmengine's. It
    calls :func:`install` when built.
    """

    def __init__(self, *args, **kwargs):
        # Before mmengine builds the model: an online teacher loads its checkpoint there.
        install()
        super().__init__(*args, **kwargs)
        if not any(isinstance(hook, RandomStateHook) for hook in self.hooks):
            self.register_hook(RandomStateHook())

    @master_only
    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        super().save_checkpoint(out_dir, filename, *args, **kwargs)
        path = Path(out_dir) / filename
        # Remote backends (no local file) keep mmengine's behaviour.
        if path.is_file():
            sign_checkpoint(path)
        remove_orphan_signatures(Path(out_dir))

    def train(self):
        model = super().train()
        # mmengine's CheckpointHook removes old checkpoints (max_keep_ckpts) after each save.
        if self.rank == 0:
            remove_orphan_signatures(Path(self.work_dir))
        return model


def remove_orphan_signatures(folder: Path) -> None:
    """Delete the signatures whose checkpoint is gone (removed by max_keep_ckpts, or by hand)."""
    for signature in folder.glob(f"*{SIGNATURE_SUFFIX}"):
        if not signature.with_name(signature.name[:-len(SIGNATURE_SUFFIX)]).exists():
            signature.unlink(missing_ok=True)


def runner_from_config(config: str | Path, work_dir: str | Path | None = None,
                       cfg_options: dict | None = None, resume: bool = False, prepare=None) -> Runner:
    """Build the Runner a config (a file or a ``package::`` name) asks for (``runner_type``), as
    mmdet's tools/train.py does.

    `prepare(cfg)`, if given, edits the loaded config after the options are merged."""
    cfg = load_config(config, cfg_options)
    if prepare is not None:
        prepare(cfg)
    cfg.work_dir = str(work_dir) if work_dir else cfg.get(
        "work_dir", str(Path("work_dirs") / Path(cfg.filename).stem))
    cfg.resume = resume
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        use_torchrun_launcher(cfg)
    if "runner_type" in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def use_torchrun_launcher(cfg) -> None:
    """DDP through mmengine's pytorch launcher, on GPUs and on CPUs alike.

    mmengine 0.10's launcher calls torch.cuda.set_device and gives DDP a CUDA device id. On a
    machine without CUDA, ldcache starts the gloo process group itself (mmengine then skips its
    own start) and wraps the model in DDP without device ids.
    """
    cfg.launcher = "pytorch"
    if torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False,
                                 find_unused_parameters=cfg.get("find_unused_parameters", False))

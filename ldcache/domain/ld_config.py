"""mmdetection's LD configs (configs/ld/ of mmdet 3.x and the user configs that inherit them): where
their teacher, its checkpoint, the training data and the trained views are.

An LD config builds ``KnowledgeDistillationSingleStageDetector`` with ``teacher_config`` (a config
file, by mmdet's habit a path relative to mmdet's repository, ``configs/gfl/...``) and
``teacher_ckpt`` (a local file or a URL), and trains an ``LDHead`` student on its train dataset.
"""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from mmengine.config import Config

from ..errors import BadInputError

# Seconds a checkpoint download may stall before it is given up (no network: a one-line error).
FETCH_TIMEOUT = 30


def config_file(name: str | Path) -> Path:
    """The file of a config name: a path, or ``package::relative/path.py`` (mmengine's notation for
    a config shipped inside an installed package, e.g. ``mmdet::ld/ld_r18-gflv1-r101_fpn_1x_coco.py``)."""
    text = str(name)
    if "::" in text:
        from mmengine.utils import get_installed_path, is_installed

        package, relative = text.split("::", 1)
        if not is_installed(package):
            raise BadInputError(f"config {text}: the package {package!r} is not installed")
        path = Path(get_installed_path(package)) / ".mim" / "configs" / relative
    else:
        path = Path(text)
    if not path.is_file():
        raise BadInputError(f"config file {text} does not exist")
    return path


def load_config(name: str | Path, cfg_options: dict | None = None) -> Config:
    """An mmengine config by file or ``package::`` name, with `cfg_options` merged (mmengine's
    ``--cfg-options``), or a clear error when there is no such file."""
    cfg = Config.fromfile(str(config_file(name)))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def is_ld_config(cfg: Config) -> bool:
    """Whether a config trains a student from a live teacher, as mmdet's LD configs do."""
    return "teacher_config" in (cfg.get("model") or {})


def teacher_config_file(cfg: Config) -> Path:
    """The teacher's config file named by an LD config's ``model.teacher_config``.

    Tried in turn: the name as given (a path from the current folder, or ``package::...``); a
    ``configs/...`` name inside mmdet's installed configs (mmdet's LD configs name their teacher
    relative to mmdet's repository); the name beside the LD config itself."""
    name = cfg.model.teacher_config
    if not isinstance(name, (str, Path)):
        raise BadInputError(f"{cfg.filename}: model.teacher_config is an inline config; ldcache records and hashes "
                            "the teacher's config file: save it to a file and name that file")
    name = str(name)
    tried = [name]
    if "::" in name:
        return config_file(name)
    candidates = [Path(name)]
    if name.startswith("configs/"):
        candidates.append(f"mmdet::{name[len('configs/'):]}")
    candidates.append(Path(cfg.filename).parent / name)
    for candidate in candidates:
        try:
            return config_file(candidate)
        except BadInputError:
            tried.append(str(candidate))
    raise BadInputError(f"the teacher config {name} (model.teacher_config of {cfg.filename}) was not found, "
                        f"tried: {', '.join(dict.fromkeys(tried))}; set it with --cfg-options "
                        "model.teacher_config=PATH")


def teacher_checkpoint(cfg: Config, override: str | Path | None) -> Path:
    """The teacher's checkpoint file: `override` (``--teacher-ckpt``), else the LD config's
    ``model.teacher_ckpt``: a local file, or a URL fetched once into torch's hub cache (where
    mmengine keeps the checkpoints it downloads, so one fetched before is reused)."""
    if override is not None:
        path = Path(override)
        if not path.is_file():
            raise BadInputError(f"teacher checkpoint {override} (--teacher-ckpt) does not exist")
        return path
    name = cfg.model.get("teacher_ckpt")
    if not name:
        raise BadInputError(f"{cfg.filename} names no teacher checkpoint (model.teacher_ckpt): give --teacher-ckpt PATH")
    if urlparse(str(name)).scheme in ("http", "https"):
        return fetched_checkpoint(str(name))
    if not Path(name).is_file():
        raise BadInputError(f"teacher checkpoint {name} (model.teacher_ckpt of {cfg.filename}) does not exist: "
                            "give --teacher-ckpt PATH")
    return Path(name)


def fetched_checkpoint(url: str) -> Path:
    """The local copy of a checkpoint URL in torch's hub cache, downloaded when not there yet.

    Every rank of a torchrun dump resolves the checkpoint before the ranks meet, so the download
    is serialised by a lock file beside it: one process fetches, the others wait and find the file.
    """
    import torch
    from filelock import FileLock

    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if path.is_file():
        return path
    try:  # a read-only hub cache, or a filesystem without locks
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{path}.lock")
        lock.acquire()
    except OSError as err:
        raise BadInputError(f"cannot download the teacher checkpoint {url} into {path.parent} ({err}): set "
                            "TORCH_HOME to a writable folder, or download it and give --teacher-ckpt PATH") from None
    try:
        if not path.is_file():
            _download(url, path)
    finally:
        lock.release()
    return path


def _download(url: str, path: Path) -> None:
    import torch

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(FETCH_TIMEOUT)
    try:
        # Downloads to a temporary file renamed into place: an interrupted fetch leaves no torn file.
        # The model zoo's file names end in the first hex digits of the file's sha256 (torch.hub's
        # convention): a corrupted or substituted download is refused, not cached.
        prefix = re.search(torch.hub.HASH_REGEX, path.name)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix.group(1) if prefix else None,
                                       progress=True)
    # OSError: URLError, a refused or timed-out connection; ValueError: a bad answer; RuntimeError:
    # a file whose sha256 does not start with its name's digits.
    except (OSError, RuntimeError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise BadInputError(f"cannot fetch the teacher checkpoint {url} ({reason}): download it where it can be "
                            "reached and give --teacher-ckpt PATH") from None
    finally:
        socket.setdefaulttimeout(previous)


def train_dataset(cfg: Config):
    """The config of the train dataset, through dataset wrappers (RepeatDataset, ...)."""
    dataset = cfg.train_dataloader.dataset
    while "dataset" in dataset:
        dataset = dataset.dataset
    return dataset


def train_data_files(cfg: Config) -> tuple[Path, Path]:
    """(annotation file, image folder) of the config's train dataset, joined to its data_root as
    mmdet's BaseDetDataset joins them."""
    dataset = train_dataset(cfg)
    root = str(dataset.get("data_root") or "")
    image_prefix = (dataset.get("data_prefix") or {}).get("img")
    if not dataset.get("ann_file") or image_prefix is None:
        raise BadInputError(f"{cfg.filename}: its train dataset names no ann_file or data_prefix.img; "
                            "give --ann-file and --img-dir")
    return Path(os.path.join(root, dataset.ann_file)), Path(os.path.join(root, image_prefix))


def train_classes(cfg: Config) -> tuple[str, ...] | None:
    """The class names the config's train dataset declares (metainfo), if it declares any."""
    classes = (train_dataset(cfg).get("metainfo") or {}).get("classes")
    return tuple(classes) if classes else None


def train_views(cfg: Config) -> tuple[tuple[int, int], bool]:
    """(scale, flip) of the views the config's student trains on: its train pipeline's fixed
    Resize scale, and whether its RandomFlip flips at all."""
    pipeline = train_dataset(cfg).get("pipeline") or []
    scales = [tuple(step["scale"]) for step in pipeline if step.get("type") == "Resize" and "scale" in step]
    if not scales:
        kinds = [step.get("type") for step in pipeline if "Resize" in str(step.get("type"))]
        raise BadInputError(f"{cfg.filename}: its train pipeline has no Resize(scale=...) of one fixed scale "
                            f"({kinds or 'no resize'}); a cache holds fixed views: give them with --scale WxH "
                            "(repeatable) and train at those scales")
    flips = [step for step in pipeline if step.get("type") == "RandomFlip"]
    flip = any(flip_probability(step.get("prob")) > 0 for step in flips)
    return scales[0], flip


def flip_probability(prob) -> float:
    """RandomFlip's chance of flipping at all (its prob: None, a number, or one per direction)."""
    if prob is None:
        return 0.0
    return float(sum(prob)) if isinstance(prob, (list, tuple)) else float(prob)

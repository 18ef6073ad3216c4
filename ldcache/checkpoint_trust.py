"""Safe checkpoint loading for mmengine under torch >= 2.6.

mmengine's own checkpoints (optimizer state, HistoryBuffer, numpy scalars, ...) cannot be read with
``torch.load(weights_only=True)``, and allowing the globals they need (``getattr`` among them)
re-opens arbitrary code execution for every checkpoint. So trust is decided per file:

- a checkpoint that ldcache's runner wrote itself carries a sidecar ``<file>.ldsig``: an
  HMAC-SHA256 of the file under a per-user secret key. It is loaded with full unpickling.
- any other checkpoint (a model-zoo teacher, a file from elsewhere, a signed file that was changed
  since) is loaded weights-only: tensors and plain containers, nothing executable.

:func:`install` makes it mmengine's loader for local paths (its CheckpointLoader), so that
``load_from``, ``resume`` and ``load_checkpoint`` all go through it. Importing this module changes
nothing in mmengine: ldcache's runner (``LDCacheRunner``) installs it when it is built, and
``ldcache.train.install()`` does for any other runner.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
from pathlib import Path

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from .errors import BadInputError, UntrustedCheckpointError
from .paths import ldcache_home

SIGNATURE_SUFFIX = ".ldsig"


def _key_path() -> Path:
    return ldcache_home() / "checkpoint.key"


def _signing_key() -> bytes:
    """The per-user secret, created on first use with owner-only permissions."""
    path = _key_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def _file_mac(path: Path, key: bytes) -> str:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            mac.update(block)
    return mac.hexdigest()


def sign_checkpoint(path: str | os.PathLike) -> Path:
    """Mark a checkpoint this user's process just wrote as trusted; returns the signature file."""
    path = Path(path)
    signature = path.with_name(path.name + SIGNATURE_SUFFIX)
    signature.write_text(_file_mac(path, _signing_key()))
    return signature


def is_trusted_checkpoint(path: str | os.PathLike) -> bool:
    """True when the file carries a valid signature made with this user's key."""
    path = Path(path)
    signature = path.with_name(path.name + SIGNATURE_SUFFIX)
    if not signature.is_file() or not _key_path().is_file():
        return False
    return hmac.compare_digest(signature.read_text().strip(), _file_mac(path, _signing_key()))


def load_checkpoint_file(filename: str | os.PathLike, map_location=None):
    """Load a local checkpoint: fully if this user's runner signed it, weights-only otherwise."""
    path = Path(os.path.expanduser(str(filename)))
    if not path.is_file():
        raise BadInputError(f"checkpoint {path} does not exist")
    if is_trusted_checkpoint(path):
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UntrustedCheckpointError(
            f"checkpoint {path} was refused as untrusted: it holds Python objects beyond tensors and was not "
            "written by ldcache's runner "
            f"for this user (no valid {SIGNATURE_SUFFIX} signature), so it was not unpickled. "
            "If you trust it, re-save its weights with torch.save({'state_dict': sd}, new_path) "
            f"from a trusted session. Detail: {str(err).splitlines()[0]}") from None


def _mmengine_local_loader(filename, map_location):
    return load_checkpoint_file(filename, map_location)


# mmengine's CheckpointLoader prints the loader's name without its first ten characters.
_mmengine_local_loader.__name__ = "load_from_local_signed"


def install() -> None:
    """Make :func:`load_checkpoint_file` mmengine's loader of local checkpoints. Idempotent."""
    CheckpointLoader.register_scheme(prefixes="", loader=_mmengine_local_loader, force=True)

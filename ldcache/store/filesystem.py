"""Where a store lives: a local folder or an object-store URL, reached through fsspec."""
from __future__ import annotations

from pathlib import Path

import fsspec


def store_filesystem(path: str | Path):
    """(fsspec filesystem, root inside it) of a store: a local folder or an object-store URL.

    Credentials and endpoints come from the filesystem's usual environment (for S3: AWS_* variables),
    never from the store or the command line."""
    return fsspec.core.url_to_fs(str(path))


def store_exists(path: str | Path) -> bool:
    """Whether anything is stored at `path` (files in a folder, or objects under a URL prefix)."""
    fs, root = store_filesystem(path)
    return bool(fs.exists(root) and fs.ls(root))


def store_bytes_on_disk(path: str | Path) -> int:
    """Total size of a store's files or objects."""
    fs, root = store_filesystem(path)
    return int(fs.du(root, total=True))

"""A finished store's small arrays for its readers: read once per machine, then memory-mapped.

Every DataLoader worker of every rank opens its own reader. Each needs the row pointers, the
per-record geometry and the shard index (about 75 MB at COCO's size, estimated from their shapes), which would otherwise be
read, decoded and held once per worker (64 copies on an 8-GPU node with 8 workers each). The
first reader on a machine writes them as .npy files under `$LDCACHE_HOME/tables/`, keyed by the
store's location and its `summary.completion_id` (new at every completion, a repair's too); every
reader then maps them, so the page cache holds one copy per machine. Where that folder cannot be
written, a reader keeps its own copy in memory. The reader that writes the tables of a new
completion deletes those of the store's earlier ones, which no reader opens again (a process that
still maps them keeps its pages): the folder holds one set per store, not one per repair.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np

from ..paths import ldcache_home
from .attrs import StoreAttrs

# The arrays a reader maps, and one derived table: the image indexes in the order of their ids.
TABLES = ("ptr", "image_ids", "img_shape", "pad_shape", "scale_factor", "flip", "shard_index", "image_files",
          "gt_ptr", "gt_boxes")
READY = "ready"  # written last: a folder without it is being written, or was left by a killed reader
SOURCE = "store"  # this machine and the store's location, to find its tables of other completions


def tables_folder(store: str, attrs: StoreAttrs) -> Path:
    """Where this machine keeps the tables of one completion of one store: under $LDCACHE_TABLES,
    or $LDCACHE_HOME/tables. Each folder can be deleted at any time; a reader writes it again."""
    key = hashlib.sha256(f"{_location(store)}\0{attrs.summary.completion_id}".encode()).hexdigest()[:32]
    return Path(os.environ.get("LDCACHE_TABLES", ldcache_home() / "tables")) / key


def _location(store: str) -> str:
    return store if "://" in store else str(Path(store).resolve())


def _source(store: str) -> str:
    return f"{socket.gethostname()}\n{_location(store)}"


def load_tables(store: str, attrs: StoreAttrs,
                read: Callable[[list[str]], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """{name: array} of TABLES and 'image_order', memory-mapped from this machine's copy; `read(names)`
    reads arrays from the store (checked) when there is no copy yet."""
    folder = tables_folder(store, attrs)
    if not (folder / READY).exists():
        values = read(list(TABLES))
        values["image_order"] = np.argsort(values["image_ids"], kind="stable")
        source = _source(store)
        if not _write_tables(folder, values, source):
            return values
        _remove_other_completions(folder, source)
    # Plain ndarray views of the maps: numpy.memmap pays a Python hook on every index.
    return {name: np.asarray(np.load(folder / f"{name}.npy", mmap_mode="r")) for name in (*TABLES, "image_order")}


def _write_tables(folder: Path, values: dict[str, np.ndarray], source: str) -> bool:
    """Write the tables, each file atomically (readers racing here write the same bytes); False
    when the folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in values.items():
            _write_atomically(folder / f"{name}.npy", lambda f, a=array: np.save(f, np.ascontiguousarray(a)))
        _write_atomically(folder / SOURCE, lambda f: f.write(source.encode()))
        _write_atomically(folder / READY, lambda f: f.write(b"ok\n"))
    except OSError:
        return False
    return True


def _remove_other_completions(folder: Path, source: str) -> None:
    """Delete the tables this machine wrote for the store of `source` (`_source`) and completions
    other than `folder`'s."""
    for other in folder.parent.iterdir():
        try:
            if other != folder and (other / SOURCE).read_bytes() == source.encode():
                shutil.rmtree(other, ignore_errors=True)
        except OSError:  # not a folder of tables, or one another reader is deleting
            continue


def kept_arrays(store: str, attrs: StoreAttrs, name: str, keys: Collection[str],
                compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """{key: array} of `keys`, derived from one completion of a store (a full pass over its rows,
    say): `compute()` once per machine, then read back from `name`.npz beside the store's tables
    (and deleted with them). Computed afresh where the folder cannot be written, and where the kept
    file has other keys (another version of ldcache wrote it); a change of what a key means needs a
    new `name`."""
    path = tables_folder(store, attrs) / f"{name}.npz"
    if path.exists():
        with np.load(path) as kept:
            if set(kept.files) == set(keys):
                return {key: kept[key] for key in kept.files}
    values = compute()
    if path.parent.is_dir():
        try:
            _write_atomically(path, lambda f: np.savez(f, **values))
        except OSError:
            pass  # a read-only folder: the next start computes them again
    return values


def _write_atomically(path: Path, write: Callable) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

"""Open a store and read its records (docs/store-format.md). Imports numpy, zarr, numcodecs and fsspec only."""
from __future__ import annotations

from pathlib import Path

import numcodecs
import numpy as np
import zarr

from ..errors import StoreError, StoreFormatError, StoreIncompleteError, StoreMismatchError, StoreNotFoundError
from ..domain.grid import featmap_sizes
from .attrs import StoreAttrs
from .damage import CRC_BYTES, checksum_problem, chunk_key, corrupt_error
from .fetch import Fetcher, io_error
from .filesystem import store_exists, store_filesystem
from .format import FLAG_MAIN, MASK_DTYPE, STATUS_COMPLETE
from .layout import BlockMap
from .layout_check import ARRAYS, array_problems, ptr_problems
from .shards import ROW_ARRAYS, ChunkDamage, ShardedRows
from .tables import load_tables
from .targets import LDTargets

ZSTD = numcodecs.Zstd()


def open_store(path: str | Path, require_complete: bool = True, mode: str = "r") -> tuple[zarr.Group, StoreAttrs]:
    """The store's group and its validated attributes; refuses a missing store, another format
    version, an attribute that is not as documented, and (unless told otherwise) an unfinished dump."""
    if not store_exists(path):
        raise StoreNotFoundError(f"store {path} does not exist")
    try:
        group = zarr.open_group(str(path), mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        raise StoreFormatError(f"{path} is not an ldcache store (no Zarr group there)") from None
    except OSError as err:
        raise io_error(path, err) from None
    raw = dict(group.attrs)
    if "ldcache_format" not in raw:
        raise StoreFormatError(f"{path} is a Zarr group but not an ldcache store (no ldcache_format attribute)")
    try:
        attrs = StoreAttrs.from_dict(raw)
    except StoreFormatError as err:
        raise StoreFormatError(f"{path}: {err}") from None
    if require_complete and attrs.status != STATUS_COMPLETE:
        raise StoreIncompleteError(
            f"{path} is unfinished (status '{attrs.status}'): its dump stopped before the end. "
            "Re-run the same `ldcache dump-teacher` command with --resume to finish it.")
    return group, attrs


def open_arrays(path, group: zarr.Group) -> dict[str, zarr.Array]:
    """Every array of the store by name; one whose zarr.json is missing or unreadable is named."""
    arrays = {}
    for name in ARRAYS:
        try:
            arrays[name] = group[name]
        except (KeyError, ValueError, TypeError) as err:
            raise StoreFormatError(f"{path}: array '{name}' cannot be opened (its zarr.json is missing or not "
                                   f"valid: {str(err)[:200]}); dump the store again") from None
        except OSError as err:
            raise io_error(f"{path}/{name}/zarr.json", err) from None
    return arrays


class CheckedArrays:
    """The store's one-object arrays (everything but `masks` and `logits`), fetched and checked
    without zarr, with damage named as an ldcache error."""

    def __init__(self, path, attrs: StoreAttrs, arrays: dict[str, zarr.Array], fetcher: Fetcher):
        self.path, self.attrs, self.arrays, self.fetcher = path, attrs, arrays, fetcher

    def read(self, name: str) -> np.ndarray:
        """The whole array; StoreCorruptError when its object is missing or fails its checksum."""
        return self.read_many([name])[name]

    def read_many(self, names: list[str]) -> dict[str, np.ndarray]:
        """{name: whole array}, their objects fetched in one request."""
        values, problems = self.check_many(names)
        for name, problem in problems.items():
            array = self.arrays[name]
            raise corrupt_error(self.path, self.attrs, name, chunk_key(array, (0,) * array.ndim),
                                "a per-record or per-image array, read for every block", problem)
        return values

    def check_many(self, names: list[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """({name: array} of the intact arrays, {name: what is wrong} of the others), in one request."""
        stored = [n for n in names if self.arrays[n].size]
        blobs = self.fetcher.objects([self._key(n) for n in stored])
        values = {n: np.zeros(self.arrays[n].shape, self.arrays[n].dtype) for n in names if n not in stored}
        problems = {}
        for name, blob in zip(stored, blobs):
            array = self.arrays[name]
            problem = checksum_problem(blob)
            if problem is None:
                try:
                    raw = ZSTD.decode(memoryview(blob)[:-CRC_BYTES])
                except RuntimeError as err:
                    problem = f"zstd cannot decode it ({err})"
                else:
                    if len(raw) != array.nbytes:
                        problem = f"it decodes to {len(raw)} bytes, not the {array.nbytes} of shape {array.shape}"
            if problem:
                problems[name] = problem
            else:
                values[name] = np.frombuffer(raw, dtype=array.dtype.newbyteorder("<")).reshape(array.shape)
        return values, problems

    def _key(self, name: str) -> str:
        return f"{name}/{chunk_key(self.arrays[name], (0,) * self.arrays[name].ndim)}"


class StoreReader:
    """Read records of a finished store. Cheap to create; open one per DataLoader worker.

    Opening fetches a fixed number of objects whatever the store's size: the attributes, the
    arrays' metadata and, on the first open on a machine, the small arrays (store/tables.py). A
    record's rows of `masks` and `logits` then come in one batched request of byte ranges.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path) if "://" not in str(path) else path
        self.group, self.attrs = open_store(path)
        arrays = open_arrays(path, self.group)
        problems = array_problems(arrays, self.attrs)
        if problems:
            raise StoreFormatError(f"{path}: {problems[0]}; `ldcache verify {path}` says more")
        self.fetcher = Fetcher(*store_filesystem(path))
        self.arrays = CheckedArrays(path, self.attrs, arrays, self.fetcher)
        self.tables = load_tables(str(path), self.attrs, lambda names: self._checked_tables(names, arrays))
        self.ptr, self.image_ids = self.tables["ptr"], self.tables["image_ids"]
        self.blocks = BlockMap.of_store(self.ptr, self.attrs, self.image_ids)
        self.num_views = len(self.attrs.views)
        self.img_shape, self.pad_shape = self.tables["img_shape"], self.tables["pad_shape"]
        self.scale_factor, self.flip = self.tables["scale_factor"], self.tables["flip"]
        self._rows = [ShardedRows(name, arrays[name]) for name in ROW_ARRAYS]
        self.codec = self.attrs.value_codec()
        self.strides = self.attrs.head.strides
        self.num_classes = self.attrs.head.num_classes

    def _checked_tables(self, names: list[str], arrays: dict[str, zarr.Array]) -> dict[str, np.ndarray]:
        """The small arrays read from the store, their row pointers checked against the layout:
        once per machine and completion (the tables are kept), not at every worker's start."""
        values = self.arrays.read_many(names)
        problems = ptr_problems(values["ptr"], self.attrs, arrays["masks"].shape[0])
        if problems:
            raise StoreFormatError(f"{self.path}: {problems[0]}; `ldcache verify {self.path}` says more")
        return values

    @property
    def num_records(self) -> int:
        return self.ptr.shape[0]

    def record_index(self, image_id: int, view: int) -> int:
        """The record of (image id, view index), or a clear error."""
        order = self.tables["image_order"]
        k = int(np.searchsorted(self.image_ids, image_id, sorter=order))
        if k >= len(order) or int(self.image_ids[order[k]]) != image_id:
            raise StoreMismatchError(f"image id {image_id} is not in store {self.path}")
        if not 0 <= view < self.num_views:
            raise StoreMismatchError(f"view {view} out of range: the store has {self.num_views} views")
        return int(order[k]) * self.num_views + view

    def read_record(self, record: int) -> LDTargets:
        """All levels of one record: its rows of `masks` and `logits`, fetched together."""
        bounds = np.asarray(self.ptr[record])
        start = int(bounds[0])
        masks, values = self.read_rows(start, int(bounds[-1]))
        grid = featmap_sizes(tuple(int(v) for v in self.pad_shape[record]), self.strides)
        return LDTargets(bounds - start, np.asarray(grid, dtype=np.int64), masks, values, self.num_classes)

    def read_rows(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """MASK_DTYPE rows start:end and their decoded values [end - start, 4 * bins + C], in one
        request for both arrays; every chunk's checksum is checked, a lost chunk is an error."""
        masks_bytes, stored = self._fetch_rows(start, end)
        masks = np.ascontiguousarray(masks_bytes).view(MASK_DTYPE).reshape(-1)
        class_rows = None if self.attrs.values.vlr_class_logits else (masks["flags"] & FLAG_MAIN) > 0
        return masks, self.codec.decode(stored, class_rows)

    def _pieces(self, start: int, end: int) -> list[tuple[int, int, int, range]]:
        """(shard, first row, end row, inner chunks) of each shard the rows start:end lie in."""
        shard_rows, chunk_rows = self.attrs.layout.shard_rows, self.attrs.layout.chunk_rows
        pieces = []
        for shard in range(start // shard_rows, (end - 1) // shard_rows + 1):
            base = shard * shard_rows
            lo, hi = max(start, base), min(end, base + shard_rows)
            pieces.append((shard, lo, hi, range((lo - base) // chunk_rows, (hi - 1 - base) // chunk_rows + 1)))
        return pieces

    def _fetch_rows(self, start: int, end: int) -> list[np.ndarray]:
        """Rows start:end of each row array, through one batched request of byte ranges."""
        if end <= start:
            return [np.zeros((0, r.width), dtype=r.dtype) for r in self._rows]
        pieces = self._pieces(start, end)
        index = self.tables["shard_index"]
        requests = []
        for a, rows in enumerate(self._rows):
            for shard, _, _, chunks in pieces:
                try:
                    span = rows.chunk_span(index[a, shard], chunks)
                except ChunkDamage as damage:
                    raise self._damage(rows, shard, damage) from None
                requests.append((rows.shard_key(shard), *span))
        blobs = iter(self.fetcher.ranges(*zip(*requests)))
        out = []
        for a, rows in enumerate(self._rows):
            parts = []
            for (shard, lo, hi, chunks), (_, span_start, _) in zip(pieces, requests[a * len(pieces):]):
                try:
                    decoded = rows.decode_span(next(blobs), index[a, shard], chunks, span_start)
                except ChunkDamage as damage:
                    raise self._damage(rows, shard, damage) from None
                first = shard * rows.shard_rows + chunks.start * rows.chunk_rows
                parts.append(decoded[lo - first:hi - first])
            out.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
        return out

    def _damage(self, rows: ShardedRows, shard: int, damage: ChunkDamage) -> StoreError:
        block = self.blocks.block_of_row(shard * rows.shard_rows)
        return corrupt_error(self.path, self.attrs, rows.name, describe_chunk(rows, shard, damage.chunk),
                             self.blocks.describe(block), damage.problem)

    def image_file(self, image_index: int) -> str:
        """File name of an image, relative to the dump's image folder."""
        return bytes(self.tables["image_files"][image_index]).rstrip(b"\0").decode()

    def gt_boxes(self, image_index: int) -> np.ndarray:
        """[G, 4] xyxy GT boxes of an image in its original coordinates, as the dump used them."""
        lo, hi = (int(v) for v in self.tables["gt_ptr"][image_index:image_index + 2])
        return np.array(self.tables["gt_boxes"][lo:hi]) if hi > lo else np.zeros((0, 4), np.float32)

    def match_view(self, image_id: int, img_shape, scale_factor, flip: bool) -> int:
        """The record of this image whose geometry is exactly the sample's, or a clear error."""
        first = self.record_index(image_id, 0)
        candidates = range(first, first + self.num_views)
        for record in candidates:
            if (tuple(self.img_shape[record]) == tuple(img_shape) and bool(self.flip[record]) == bool(flip)
                    and np.allclose(self.scale_factor[record], scale_factor, rtol=1e-6)):
                return record
        stored = ", ".join(f"{tuple(int(v) for v in self.img_shape[r])}{' flipped' if self.flip[r] else ''}"
                           for r in candidates)
        raise StoreMismatchError(
            f"image {image_id}: the pipeline produced img_shape {tuple(img_shape)}"
            f"{' flipped' if flip else ''} (scale_factor {tuple(round(float(v), 4) for v in scale_factor)}), "
            f"but the store {self.path} holds views {stored} only "
            f"(dumped at scales {[list(v.scale) for v in self.attrs.views]}). Make the train pipeline "
            "resize and flip as the dump did, or dump the views it needs (--scale, --flip).")


def describe_chunk(rows: ShardedRows, shard: int, chunk: int | None) -> str:
    """'c/3/0' for a shard, 'c/3/0 inner chunk 5 (rows 2560-3071 of the shard)' for one of its chunks."""
    key = rows.shard_key(shard).split("/", 1)[1]
    if chunk is None:
        return key
    return f"{key} inner chunk {chunk} (rows {chunk * rows.chunk_rows}-{(chunk + 1) * rows.chunk_rows - 1} of the shard)"

"""Open a store and read its records (docs/store-format.md). Imports numpy, zarr and numcodecs only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from ..errors import StoreError, StoreFormatError, StoreIncompleteError, StoreMismatchError, StoreNotFoundError
from .attrs import StoreAttrs
from .chunks import RowReader
from .damage import BlockMap, checksum_problem, chunk_grid, chunk_key, corrupt_error
from .filesystem import store_exists, store_filesystem
from .format import FLAG_MAIN, MASK_DTYPE, STATUS_COMPLETE
from ..domain.grid import featmap_sizes
from .layout_check import ARRAYS, array_problems, ptr_problems
from .targets import LDTargets


def open_store(path: str | Path, require_complete: bool = True, mode: str = "r") -> tuple[zarr.Group, StoreAttrs]:
    """The store's group and its validated attributes; refuses a missing store, another format
    version, an attribute that is not as documented, and (unless told otherwise) an unfinished dump."""
    if not store_exists(path):
        raise StoreNotFoundError(f"store {path} does not exist")
    try:
        group = zarr.open_group(str(path), mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        raise StoreFormatError(f"{path} is not an ldcache store (no Zarr group there)") from None
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
    return arrays


class CheckedArrays:
    """Whole arrays of a store read through zarr, with damage named as an ldcache error."""

    def __init__(self, path, attrs: StoreAttrs, arrays: dict[str, zarr.Array]):
        self.path, self.attrs, self.arrays = path, attrs, arrays
        self.fs, self.root = store_filesystem(path)
        self.blocks: BlockMap | None = None  # known once ptr is read: then damage names its block

    def read(self, name: str) -> np.ndarray:
        """The whole array; StoreCorruptError when one of its chunks fails its checksum, or when the
        one chunk of a per-record or per-image array (always written) is missing."""
        array = self.arrays[name]
        grid = chunk_grid(array)
        if name not in ("done", "block_stats") and len(grid) == 1 and not self.fs.exists(self._path(name, grid[0])):
            raise self._error(name, grid[0], "the chunk object is missing")
        try:
            return array[:]
        except ValueError as err:  # zarr's crc32c codec: "Stored and computed checksum do not match"
            if "checksum" not in str(err):
                raise
            raise self._first_damage(name) from None

    def _path(self, name: str, coords: tuple[int, ...]) -> str:
        return f"{self.root}/{name}/{chunk_key(self.arrays[name], coords)}"

    def _first_damage(self, name: str) -> StoreError:
        for coords in chunk_grid(self.arrays[name]):
            path = self._path(name, coords)
            problem = checksum_problem(self.fs.cat_file(path)) if self.fs.exists(path) else None
            if problem:
                return self._error(name, coords, problem)
        return StoreFormatError(f"{self.path}: array '{name}' cannot be read (a chunk fails its checksum, "
                                "and then none did); run `ldcache verify` on it")

    def _error(self, name: str, coords: tuple[int, ...], problem: str) -> StoreError:
        if name in ("done", "block_stats") and self.blocks is not None:
            where = self.blocks.describe(coords[0])
        else:
            where = "a per-record or per-image array, read for every block"
        return corrupt_error(self.path, self.attrs, name, chunk_key(self.arrays[name], coords), where, problem)


class StoreReader:
    """Read records of a finished store. Cheap to create; open one per DataLoader worker."""

    def __init__(self, path: str | Path):
        self.path = Path(path) if "://" not in str(path) else path
        self.group, self.attrs = open_store(path)
        arrays = open_arrays(path, self.group)
        self.arrays = CheckedArrays(path, self.attrs, arrays)
        self.ptr = self.arrays.read("ptr")
        rows = arrays["masks"].shape[0]
        problems = array_problems(arrays, self.attrs) or ptr_problems(self.ptr, self.attrs, rows)
        if problems:
            raise StoreFormatError(f"{path}: {problems[0]}; `ldcache verify {path}` says more")
        self.image_ids = self.arrays.read("image_ids")
        self.blocks = self.arrays.blocks = BlockMap(self.ptr, self.attrs, self.image_ids)
        self._check_done(self.arrays.read("done"))
        self.num_views = len(self.attrs.views)
        self._record_of_image = {int(i): k for k, i in enumerate(self.image_ids)}
        self.img_shape = self.arrays.read("img_shape")
        self.pad_shape = self.arrays.read("pad_shape")
        self.scale_factor = self.arrays.read("scale_factor")
        self.flip = self.arrays.read("flip")
        fs, root = store_filesystem(path)
        self._masks = RowReader(fs, f"{root}/masks", arrays["masks"], self._row_damage("masks", arrays["masks"]))
        self._logits = RowReader(fs, f"{root}/logits", arrays["logits"], self._row_damage("logits", arrays["logits"]))
        self.codec = self.attrs.value_codec()
        self.strides = self.attrs.head.strides
        self.num_classes = self.attrs.head.num_classes

    def _check_done(self, done: np.ndarray) -> None:
        """A complete store has every done flag set; one that is not was lost after the dump."""
        lost = np.nonzero(done != 1)[0]
        if len(lost):
            chunk = chunk_key(self.arrays.arrays["done"], (int(lost[0]),))
            raise corrupt_error(self.path, self.attrs, "done", chunk, self.blocks.describe(int(lost[0])),
                                f"the done flag is missing or 0 in a complete store ({len(lost)} block(s) so)")

    def _row_damage(self, name: str, array: zarr.Array):
        def error(chunk: int, problem: str) -> StoreError:
            where = self.blocks.describe(self.blocks.block_of_chunk(chunk))
            return corrupt_error(self.path, self.attrs, name, chunk_key(array, (chunk, 0)), where, problem)
        return error

    @property
    def num_records(self) -> int:
        return self.ptr.shape[0]

    def record_index(self, image_id: int, view: int) -> int:
        """The record of (image id, view index), or a clear error."""
        if image_id not in self._record_of_image:
            raise StoreMismatchError(f"image id {image_id} is not in store {self.path}")
        if not 0 <= view < self.num_views:
            raise StoreMismatchError(f"view {view} out of range: the store has {self.num_views} views")
        return self._record_of_image[image_id] * self.num_views + view

    def read_record(self, record: int) -> LDTargets:
        """All levels of one record: the chunks under its rows of `masks` and `logits`."""
        bounds = self.ptr[record]
        start, end = int(bounds[0]), int(bounds[-1])
        masks = np.ascontiguousarray(self._masks.rows(start, end)).view(MASK_DTYPE).reshape(-1)
        grid = featmap_sizes(tuple(self.pad_shape[record]), self.strides)
        class_rows = None if self.attrs.values.vlr_class_logits else (masks["flags"] & FLAG_MAIN) > 0
        return LDTargets(bounds - start, np.asarray(grid, dtype=np.int64), masks,
                         self.codec.decode(self._logits.rows(start, end), class_rows), self.num_classes)

    def row_ranges(self) -> list[tuple[int, int]]:
        """(start, end) of the stored rows, one range per chunk of `masks` and `logits` (the padding
        after a block's last row left out): a pass over them reads every chunk once."""
        chunk_rows = self.attrs.layout.chunk_rows
        ranges = []
        for block in range(self.blocks.num_blocks):
            start, end = self.blocks.rows(block)
            ranges += [(max(start, c * chunk_rows), min(end, (c + 1) * chunk_rows)) for c in self.blocks.chunks(block)]
        return ranges

    def read_rows(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """MASK_DTYPE rows start:end and their decoded values [end - start, 4 * bins + C], through
        the same checks as records (checksums; a lost chunk is an error, never zeros)."""
        masks = np.ascontiguousarray(self._masks.rows(start, end)).view(MASK_DTYPE).reshape(-1)
        return masks, self.codec.decode(self._logits.rows(start, end))

    def image_file(self, image_index: int) -> str:
        """File name of an image, relative to the dump's image folder."""
        return bytes(self.arrays.read("image_files")[image_index]).rstrip(b"\0").decode()

    def gt_boxes(self, image_index: int) -> np.ndarray:
        """[G, 4] xyxy GT boxes of an image in its original coordinates, as the dump used them."""
        lo, hi = (int(v) for v in self.arrays.read("gt_ptr")[image_index:image_index + 2])
        return self.arrays.read("gt_boxes")[lo:hi] if hi > lo else np.zeros((0, 4), np.float32)

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

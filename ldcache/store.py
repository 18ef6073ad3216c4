"""The ldcache store: a Zarr v3 group of teacher logits and LD region data (docs/store-format.md).

Rows are ragged (CSR): record r = image_index * n_views + view_index owns rows
``ptr[r, 0] : ptr[r, L]``, level l rows ``ptr[r, l] : ptr[r, l + 1]``. Every row has a packed
region entry in ``masks`` and its teacher logits in ``logits`` (encoded by ``value_codec``), so
reading one record takes the chunks under two row ranges. Records are grouped in blocks of
``block_size``, and each block's rows start on a chunk boundary. A block has one writer, and two
writers never touch one chunk. A block's ``done`` flag is written after its rows, and ``status``
becomes "complete" only once every block is done.
"""
from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from .errors import LDCacheError
from .row_reader import RowReader
from .value_codec import ValueCodec

FORMAT_VERSION = 2
STATUS_CREATED, STATUS_MASKS, STATUS_COMPLETE = "created", "masks-written", "complete"

# Flag bits of a row: which region it belongs to at the dump's gamma.
FLAG_MAIN, FLAG_VLR_OFFICIAL, FLAG_VLR_DIOU = 1, 2, 4
MASK_DTYPE = np.dtype([
    ("loc", "<i4"),  # y * W_l + x on the level's per-image grid
    ("flags", "u1"),
    ("vlr_ratio", "<f4", (2,)),  # largest d/thr below 1, per VLR metric (official, diou)
    ("vlr_weight", "<f2", (2,)),  # IoU with the chosen GT, per VLR metric
])


def block_row_starts(counts: np.ndarray, block_size: int, chunk_rows: int) -> tuple[np.ndarray, int]:
    """Row offset of every record [N, L+1] and the total rows, each block starting on a chunk."""
    num_records, num_levels = counts.shape
    ptr = np.zeros((num_records, num_levels + 1), dtype=np.int64)
    cursor = 0
    for start in range(0, num_records, block_size):
        cursor = -(-cursor // chunk_rows) * chunk_rows  # next chunk boundary
        for r in range(start, min(start + block_size, num_records)):
            ptr[r, 0] = cursor
            ptr[r, 1:] = cursor + np.cumsum(counts[r])
            cursor = int(ptr[r, -1])
    return ptr, -(-cursor // chunk_rows) * chunk_rows


def _compressor(typesize: int, shuffle: BloscShuffle = BloscShuffle.shuffle) -> BloscCodec:
    # Level 9 over 5: 5% smaller q8 stores, decoded as fast (measured); the writer's extra
    # compression time overlaps the teacher's forward passes.
    return BloscCodec(cname="zstd", clevel=9, shuffle=shuffle, typesize=typesize)


def _logits_compressor(codec: ValueCodec) -> BloscCodec:
    """Bit shuffle for float logits: their sign and exponent bits compress, and zstd decodes the
    bit planes about twice as fast as byte-shuffled floats (measured on fp16 teacher logits).
    q8 rows are mostly small codes, which zstd packs best as they are."""
    if codec.name == "q8":
        return _compressor(1, BloscShuffle.noshuffle)
    return _compressor(codec.storage_dtype.itemsize, BloscShuffle.bitshuffle)


def create_store(path: Path, attrs: dict, ptr: np.ndarray, total_rows: int, record_meta: dict,
                 codec: ValueCodec, block_size: int, chunk_rows: int) -> zarr.Group:
    """Lay out an empty store: every array allocated, no block done, status 'created'."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update({**attrs, "ldcache_format": FORMAT_VERSION, "status": STATUS_CREATED})
    rows = max(total_rows, 1)
    group.create_array("ptr", data=ptr, chunks=ptr.shape)
    for name, values in record_meta.items():
        group.create_array(name, data=values, chunks=values.shape)
    group.create_array("masks", shape=(rows, MASK_DTYPE.itemsize), dtype="u1",
                       chunks=(chunk_rows, MASK_DTYPE.itemsize), fill_value=0,
                       # One row is one shuffle element: its bytes are grouped field by field.
                       compressors=_compressor(MASK_DTYPE.itemsize))
    group.create_array("logits", shape=(rows, codec.width), dtype=codec.storage_dtype,
                       chunks=(chunk_rows, codec.width), compressors=_logits_compressor(codec), fill_value=0)
    num_blocks = -(-ptr.shape[0] // block_size)
    group.create_array("done", shape=(num_blocks,), dtype="u1", chunks=(1,), fill_value=0)
    return group


def block_rows(ptr: np.ndarray, block: int, block_size: int) -> tuple[int, int, range]:
    """(first row, end row, records) of a block."""
    records = range(block * block_size, min((block + 1) * block_size, ptr.shape[0]))
    return int(ptr[records.start, 0]), int(ptr[records.stop - 1, -1]), records


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


def store_codec(attrs: dict) -> ValueCodec:
    """The value codec a store's attributes name."""
    head = attrs["head"]
    return ValueCodec(attrs["values"]["dtype"], head["reg_max"] + 1, head["num_classes"])


def open_group_checked(path: str | Path, require_complete: bool = True, mode: str = "r") -> zarr.Group:
    """Open a store and refuse one that is missing, of another format version or unfinished."""
    try:
        group = zarr.open_group(str(path), mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        raise LDCacheError(f"{path} is not an ldcache store (no Zarr group there)") from None
    version = group.attrs.get("ldcache_format")
    if version is None:
        raise LDCacheError(f"{path} is a Zarr group but not an ldcache store (no ldcache_format attribute)")
    if version != FORMAT_VERSION:
        raise LDCacheError(f"{path} has store format version {version}; this ldcache reads version "
                           f"{FORMAT_VERSION}. Re-run dump-teacher with this version.")
    status = group.attrs.get("status")
    if require_complete and status != STATUS_COMPLETE:
        raise LDCacheError(f"{path} is unfinished (status '{status}'): its dump stopped before the end. "
                           "Re-run the same `ldcache dump-teacher` command with --resume to finish it.")
    return group


class StoreReader:
    """Read records of a finished store. Cheap to create; open one per DataLoader worker."""

    def __init__(self, path: str | Path):
        self.path = Path(path) if "://" not in str(path) else path
        self.group = open_group_checked(path)
        self.attrs = dict(self.group.attrs)
        if not np.all(self.group["done"][:] == 1):
            raise LDCacheError(f"{path} says complete but some blocks are not done; re-run with --resume")
        self.ptr = self.group["ptr"][:]
        self.image_ids = self.group["image_ids"][:]
        self.num_views = len(self.attrs["views"])
        self._record_of_image = {int(i): k for k, i in enumerate(self.image_ids)}
        self.img_shape = self.group["img_shape"][:]
        self.pad_shape = self.group["pad_shape"][:]
        self.scale_factor = self.group["scale_factor"][:]
        self.flip = self.group["flip"][:]
        fs, root = store_filesystem(path)
        self._masks = RowReader(fs, f"{root}/masks", self.group["masks"])
        self._logits = RowReader(fs, f"{root}/logits", self.group["logits"])
        self.codec = store_codec(self.attrs)
        self._main_rows_only = self.attrs["values"]["class_logits"] == "main rows"
        head = self.attrs["head"]
        self.strides = head["strides"]
        self.num_classes = head["num_classes"]

    @property
    def num_records(self) -> int:
        return self.ptr.shape[0]

    def record_index(self, image_id: int, view: int) -> int:
        if image_id not in self._record_of_image:
            raise LDCacheError(f"image id {image_id} is not in store {self.path}")
        if not 0 <= view < self.num_views:
            raise LDCacheError(f"view {view} out of range: the store has {self.num_views} views")
        return self._record_of_image[image_id] * self.num_views + view

    def read_record(self, record: int):
        """All levels of one record (an LDTargets): the chunks under its rows of `masks` and `logits`."""
        from .targets import LDTargets
        from .views import featmap_sizes

        bounds = self.ptr[record]
        start, end = int(bounds[0]), int(bounds[-1])
        masks = np.ascontiguousarray(self._masks.rows(start, end)).view(MASK_DTYPE).reshape(-1)
        grid = featmap_sizes(tuple(self.pad_shape[record]), self.strides)
        class_rows = (masks["flags"] & FLAG_MAIN) > 0 if self._main_rows_only else None
        return LDTargets(bounds - start, np.asarray(grid, dtype=np.int64), masks,
                         self.codec.decode(self._logits.rows(start, end), class_rows), self.num_classes)

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
        raise LDCacheError(
            f"image {image_id}: the pipeline produced img_shape {tuple(img_shape)}"
            f"{' flipped' if flip else ''} (scale_factor {tuple(round(float(v), 4) for v in scale_factor)}), "
            f"but the store {self.path} holds views {stored} only "
            f"(dumped at scales {[v['scale'] for v in self.attrs['views']]}). Make the train pipeline "
            "resize and flip as the dump did, or dump the views it needs (--scale, --flip).")

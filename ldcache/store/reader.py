"""Open a store and read its records (docs/store-format.md). Imports numpy, zarr and numcodecs only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from ..errors import (StoreFormatError, StoreIncompleteError, StoreMismatchError, StoreNotFoundError)
from .attrs import StoreAttrs
from .chunks import RowReader
from .filesystem import store_exists, store_filesystem
from .format import FLAG_MAIN, MASK_DTYPE, STATUS_COMPLETE
from .layout import featmap_sizes
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


class StoreReader:
    """Read records of a finished store. Cheap to create; open one per DataLoader worker."""

    def __init__(self, path: str | Path):
        self.path = Path(path) if "://" not in str(path) else path
        self.group, self.attrs = open_store(path)
        if not np.all(self.group["done"][:] == 1):
            raise StoreIncompleteError(f"{path} says complete but some blocks are not done; re-run the dump "
                                       "with --resume")
        self.ptr = self.group["ptr"][:]
        self.image_ids = self.group["image_ids"][:]
        self.num_views = len(self.attrs.views)
        self._record_of_image = {int(i): k for k, i in enumerate(self.image_ids)}
        self.img_shape = self.group["img_shape"][:]
        self.pad_shape = self.group["pad_shape"][:]
        self.scale_factor = self.group["scale_factor"][:]
        self.flip = self.group["flip"][:]
        fs, root = store_filesystem(path)
        self._masks = RowReader(fs, f"{root}/masks", self.group["masks"])
        self._logits = RowReader(fs, f"{root}/logits", self.group["logits"])
        self.codec = self.attrs.value_codec()
        self.strides = self.attrs.head.strides
        self.num_classes = self.attrs.head.num_classes

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

    def image_file(self, image_index: int) -> str:
        """File name of an image, relative to the dump's image folder."""
        return bytes(self.group["image_files"][image_index]).rstrip(b"\0").decode()

    def gt_boxes(self, image_index: int) -> np.ndarray:
        """[G, 4] xyxy GT boxes of an image in its original coordinates, as the dump used them."""
        gt_ptr = self.group["gt_ptr"]
        lo, hi = (int(v) for v in gt_ptr[image_index:image_index + 2])
        return self.group["gt_boxes"][lo:hi] if hi > lo else np.zeros((0, 4), np.float32)

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

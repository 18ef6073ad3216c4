"""LoadLDTargets: the train-pipeline transform that attaches an image-view's cached LD targets."""
from __future__ import annotations

import os

from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS

from ..errors import StoreMismatchError
from ..store.reader import StoreReader


@TRANSFORMS.register_module()
class LoadLDTargets(BaseTransform):
    """Put the store record matching the sample's geometry into its metainfo as ``ld_targets``.

    Place it right after ``PackDetInputs``, once every geometric transform has run. The sample's
    img_shape, scale_factor and flip (with its direction) must be exactly those of a stored view,
    or it refuses with the reason. The store is opened lazily, once per process: each DataLoader
    worker has its own reader, and nothing is opened before the fork.
    """

    def __init__(self, store: str):
        self.store = str(store)
        self._reader: StoreReader | None = None
        self._pid = None

    @property
    def reader(self) -> StoreReader:
        if self._reader is None or self._pid != os.getpid():
            self._reader, self._pid = StoreReader(self.store), os.getpid()
        return self._reader

    def transform(self, results: dict) -> dict:
        sample = results["data_samples"]
        meta = sample.metainfo
        flip = bool(meta.get("flip", False))
        if flip:
            self._check_flip_direction(int(meta["img_id"]), meta.get("flip_direction"))
        record = self.reader.match_view(int(meta["img_id"]), meta["img_shape"], meta["scale_factor"], flip)
        sample.set_metainfo({"ld_targets": self.reader.read_record(record)})
        return results

    def _check_flip_direction(self, image_id: int, direction) -> None:
        """Refuse a sample flipped otherwise than the store's flipped views (left-right)."""
        stored = self.reader.attrs.grid.flip_direction
        if direction != stored:
            raise StoreMismatchError(
                f"image {image_id}: the pipeline flipped it with flip_direction {direction!r}, but the flipped views "
                f"of store {self.store} are {stored} flips. Set direction='{stored}' in the train pipeline's "
                "RandomFlip, and keep 'flip_direction' in PackDetInputs' meta_keys")

    def __getstate__(self):
        # Readers hold open stores; each worker opens its own.
        return {**self.__dict__, "_reader": None, "_pid": None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(store={self.store!r})"

"""The store behind the viewer: opened on the first request (again after a failure, so a store
still being dumped opens once it is complete), its records read on demand, and the per-record
index the image list sorts by built in the background only when a sort needs it.

Opening reads the store's attributes and small tables (`ptr`, image ids, view geometry), as any
command does; nothing grows with the rows until the index is asked for."""
from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from ...errors import BadInputError, LDCacheError
from ...store.reader import StoreReader
from ...store.targets import LDTargets
from ..plots import view_gt_boxes, view_image
from ..report import store_summary
from ..record_index import RecordIndex, kept_record_index
from .figures import picture_uri

RECORDS_KEPT = 16  # records held decoded: the image shown, its other view, and a few visited


class IndexProgress:
    """Where the background index stands: blocks done of all, and its result or error once done."""

    def __init__(self):
        self.done, self.total = 0, 0
        self.result: RecordIndex | None = None
        self.error: str | None = None

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total


class StoreSession:
    """One store, shared by every page and callback of the viewer.

    Args:
        store (str): the store's folder or s3:// URL, as given to `ldcache inspect`.
    """

    def __init__(self, store: str):
        self.store = store
        self._reader: StoreReader | None = None
        self._lock = threading.Lock()
        self._index: IndexProgress | None = None
        self.read_record = lru_cache(maxsize=RECORDS_KEPT)(self._read_record)
        self.picture = lru_cache(maxsize=RECORDS_KEPT)(self._picture)
        self.gt_boxes = lru_cache(maxsize=RECORDS_KEPT)(self._gt_boxes)
        # The summary sizes the store by listing every object: once per viewer, not per page load.
        self.summary = lru_cache(maxsize=1)(lambda: store_summary(self.reader()))

    def reader(self) -> StoreReader:
        """The open store; raises the same LDCacheError as the CLI when it cannot be opened."""
        with self._lock:
            if self._reader is None:
                self._reader = StoreReader(self.store)
            return self._reader

    def _read_record(self, record: int) -> LDTargets:
        return self.reader().read_record(record)

    def _picture(self, record: int) -> tuple[str | None, str]:
        """The record's view as a JPEG data URI, and a note when the image cannot be shown (the
        map is drawn without it)."""
        try:
            return picture_uri(view_image(self.reader(), record)), ""
        except BadInputError as e:
            return None, f"{e}: the map is drawn without it"

    def _gt_boxes(self, record: int) -> np.ndarray:
        return view_gt_boxes(self.reader(), record)

    def index_ready(self) -> bool:
        """Whether the per-record index has been built (never starts it)."""
        return self._index is not None and self._index.result is not None

    def index(self) -> IndexProgress:
        """The per-record index: started in a background thread on the first call, whose progress
        (and, once finished, result) the returned object carries."""
        reader = self.reader()
        with self._lock:
            if self._index is None:
                self._index = IndexProgress()
                threading.Thread(target=self._build_index, args=(reader, self._index), daemon=True,
                                 name="ldcache-record-index").start()
            return self._index

    @staticmethod
    def _build_index(reader: StoreReader, progress: IndexProgress) -> None:
        try:
            progress.result = kept_record_index(reader, progress)
        except LDCacheError as e:
            progress.error = str(e)
        except Exception as e:  # noqa: BLE001 - any other failure must end the page's wait with its reason
            progress.error = f"{type(e).__name__}: {e}"

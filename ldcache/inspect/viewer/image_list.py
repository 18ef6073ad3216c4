"""The viewer's image list: the store's images sorted, searched by id and paged.

Sorting by rows needs only the row pointers every open reads; sorting by VLR rows or by the most
ambiguous Main row needs the per-record index (ldcache/inspect/record_index.py), which the viewer
builds in the background: until it is there, those columns are blank and the list keeps the id
order. Each call costs a sort of the image count (about 10 ms at COCO's 118k), not a read."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...store.reader import StoreReader
from ..record_index import RecordIndex

# Sort key -> its label; the first needs nothing but the image ids.
SORTS = {
    "id": "image id",
    "ambiguous": "most ambiguous Main row",
    "vlr": "most VLR rows",
    "fewest": "fewest rows",
    "most": "most rows",
}
NEEDS_INDEX = frozenset({"ambiguous", "vlr"})
PAGE_SIZE = 20


class ImagePage(NamedTuple):
    """One page of the list: its rows (dicts keyed as the table's columns), how many images match
    the search, the page count, and the page shown (the asked one, or the last)."""

    rows: list[dict]
    matches: int
    page_count: int
    page: int


class ImageColumns(NamedTuple):
    """Per image (summed, or the largest, over its views) [num_images]."""

    rows: np.ndarray
    main: np.ndarray | None
    vlr: np.ndarray | None
    ambiguity: np.ndarray | None  # largest mean edge entropy of a Main row; NaN without one


def image_columns(reader: StoreReader, index: RecordIndex | None) -> ImageColumns:
    """The list's numbers per image: rows from the row pointers, the rest from `index` when given
    (records are image-major: image i's views are records i * V .. i * V + V - 1)."""
    per_view = (reader.ptr[:, -1] - reader.ptr[:, 0]).reshape(-1, reader.num_views)
    if index is None:
        return ImageColumns(per_view.sum(axis=1), None, None, None)

    def images(values: np.ndarray) -> np.ndarray:
        return values.reshape(-1, reader.num_views)

    return ImageColumns(per_view.sum(axis=1), images(index.main_rows).sum(axis=1), images(index.vlr_rows).sum(axis=1),
                        np.fmax.reduce(images(index.max_main_entropy), axis=1))


def image_order(reader: StoreReader, columns: ImageColumns, sort: str) -> np.ndarray:
    """Image indexes in the order of `sort` (a key of SORTS); ties, and a sort whose column is not
    there yet, keep the id order."""
    ids = reader.image_ids
    keys = {"fewest": columns.rows, "most": -columns.rows,
            "vlr": None if columns.vlr is None else -columns.vlr,
            # Images without a Main row go last.
            "ambiguous": None if columns.ambiguity is None else -np.nan_to_num(columns.ambiguity, nan=-np.inf)}
    key = keys.get(sort)
    return np.argsort(ids, kind="stable") if key is None else np.lexsort((ids, key))


def search_mask(reader: StoreReader, query: str) -> np.ndarray:
    """bool [num_images]: the images whose id starts with `query` (all for an empty one; none for
    one that is not digits: image ids are numbers)."""
    query = query.strip()
    if not query:
        return np.ones(len(reader.image_ids), bool)
    if not query.isdigit():
        return np.zeros(len(reader.image_ids), bool)
    return np.char.startswith(reader.image_ids.astype(str), query)


def image_page(reader: StoreReader, index: RecordIndex | None, sort: str, query: str, page: int,
               page_size: int = PAGE_SIZE) -> ImagePage:
    """One page of the image list.

    Args:
        reader (StoreReader): the store.
        index (RecordIndex | None): the per-record index, None until it is built.
        sort (str): a key of SORTS.
        query (str): the search (`search_mask`).
        page (int): the page asked for, from 0 (clamped to the pages there are).
        page_size (int): images per page.

    Returns:
        ImagePage: the rows shown and the counts around them.
    """
    columns = image_columns(reader, index)
    order = image_order(reader, columns, sort)
    order = order[search_mask(reader, query)[order]]
    page_count = max(1, -(-len(order) // page_size))
    page = min(max(page, 0), page_count - 1)
    shown = order[page * page_size:][:page_size]

    def number(values: np.ndarray | None, i: int, fmt: str = "{:d}") -> str:
        if values is None:
            return "…"
        return "-" if np.isnan(values[i]) else fmt.format(values[i])

    rows = [{"image_id": int(reader.image_ids[i]), "file": reader.image_file(int(i)), "rows": int(columns.rows[i]),
             "main": number(columns.main, i), "vlr": number(columns.vlr, i),
             "ambiguity": number(columns.ambiguity, i, "{:.3f}")} for i in shown]
    return ImagePage(rows, len(order), page_count, page)

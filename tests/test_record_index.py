"""record_index: per image-view Main and VLR row counts and largest Main entropy, block by block,
against a record-by-record computation."""
import numpy as np
import pytest

from conftest import synthetic_store
from ldcache.inspect.record_index import record_index
from ldcache.inspect.stats import slice_levels, slice_records
from ldcache.store.format import FLAG_MAIN, FLAG_VLR_DIOU, FLAG_VLR_OFFICIAL
from ldcache.store.reader import StoreReader
from ldcache.store.statistics import edge_entropy


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    """Five blocks of 16 records (the last one short), in chunks of 64 rows: block 2 has no rows,
    other records have none, and some have rows but no Main row (random flags 1-7)."""
    counts = np.random.default_rng(3).integers(0, 5, (4 * 16 + 9, 5))
    counts[32:48] = 0
    counts[[0, 5, 50, 72]] = 0
    counts[[7, 10, 11, 20, 60, 61, 62, 63]] = [1, 0, 0, 0, 0]  # single rows: some without Main
    path, _, _ = synthetic_store(tmp_path_factory.mktemp("index") / "store.zarr", counts, chunk_rows=64,
                                 block_size=16, seed=3)
    return StoreReader(path)


def _brute_force(reader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Main rows, VLR rows and the largest Main mean edge entropy of each record, read one by one."""
    main, vlr, top = [], [], []
    for record in range(reader.num_records):
        levels = reader.read_record(record).levels()
        flags = np.concatenate([rows.flags for rows in levels])
        entropy = np.concatenate([edge_entropy(rows.reg).mean(axis=1, dtype=np.float64) for rows in levels])
        is_main = (flags & FLAG_MAIN) > 0
        main.append(is_main.sum())
        vlr.append(((flags & (FLAG_VLR_OFFICIAL | FLAG_VLR_DIOU)) > 0).sum())
        top.append(entropy[is_main].max() if is_main.any() else np.nan)
    return np.array(main), np.array(vlr), np.array(top)


@pytest.mark.parametrize("slice_chunks", [1, 4])
def test_record_index_equals_a_record_by_record_computation(reader, slice_chunks):
    assert reader.blocks.num_blocks == 5 and reader.blocks.chunks(2) == range(0)
    assert len(reader.blocks.chunks(1)) >= 3, "several slices per block at one chunk a slice"
    calls = []
    index = record_index(reader, lambda done, total: calls.append((done, total)), slice_chunks=slice_chunks)
    main, vlr, top = _brute_force(reader)
    assert index.main_rows.dtype == index.vlr_rows.dtype == np.int64 and index.max_main_entropy.dtype == np.float64
    assert len(index.main_rows) == reader.num_records
    np.testing.assert_array_equal(index.main_rows, main)
    np.testing.assert_array_equal(index.vlr_rows, vlr)
    np.testing.assert_allclose(index.max_main_entropy, top, rtol=1e-6)  # NaN where brute force has NaN
    no_rows = reader.ptr[:, -1] == reader.ptr[:, 0]
    assert no_rows[32:48].all() and no_rows[[0, 5, 50, 72]].all()
    assert (index.main_rows[no_rows] == 0).all() and (index.vlr_rows[no_rows] == 0).all()
    assert np.isnan(index.max_main_entropy[no_rows]).all()
    rows_without_main = ~no_rows & (index.main_rows == 0)
    assert rows_without_main.any() and np.isnan(index.max_main_entropy[rows_without_main]).all()
    assert (index.main_rows > 0).sum() > 20 and np.isfinite(index.max_main_entropy[index.main_rows > 0]).all()
    n = reader.blocks.num_blocks
    assert calls == [(done, n) for done in range(n + 1)]


def test_slice_records_and_levels_follow_the_row_pointers(reader):
    for block in range(reader.blocks.num_blocks):
        records = reader.blocks.records(block)
        block_ptr = reader.ptr[records.start:records.stop]
        first, last = int(block_ptr[0, 0]), int(block_ptr[-1, -1])
        expected_record = np.concatenate([np.full(p[-1] - p[0], r) for r, p in enumerate(block_ptr)])
        expected_level = np.concatenate([np.repeat(np.arange(5), np.diff(p)) for p in block_ptr])
        for start in range(first, last, 7):  # slices that cut records and levels anywhere
            end = min(start + 7, last)
            rows = slice(start - first, end - first)
            np.testing.assert_array_equal(slice_records(block_ptr, start, end), expected_record[rows])
            np.testing.assert_array_equal(slice_levels(block_ptr, start, end), expected_level[rows])


def test_the_index_is_built_once_per_machine_and_store_completion(reader, monkeypatch, tmp_path):
    import dataclasses

    import ldcache.inspect.record_index as module

    monkeypatch.setenv("LDCACHE_TABLES", str(tmp_path / "tables"))
    opened = StoreReader(reader.path)  # writes the store's tables in this folder
    built = []
    original = module.record_index
    monkeypatch.setattr(module, "record_index", lambda *args, **kw: built.append(1) or original(*args, **kw))
    calls = []
    first = module.kept_record_index(opened, lambda done, total: calls.append((done, total)))
    again = module.kept_record_index(StoreReader(reader.path), lambda done, total: calls.append((done, total)))
    assert len(built) == 1, "a second viewer start reads the kept index"
    for kept, fresh in zip(again, record_index(reader)):
        np.testing.assert_array_equal(kept, fresh)
        assert kept.dtype == fresh.dtype
    assert calls[-1] == calls[-2] == (reader.blocks.num_blocks,) * 2, "the page sees the index done either way"

    kept = next((tmp_path / "tables").rglob("record_index.npz"))
    with np.load(kept) as arrays:
        older = {key: arrays[key] for key in arrays.files if key != "max_main_entropy"}
    np.savez(kept, **older)  # as an ldcache whose index had other fields would have kept it
    module.kept_record_index(StoreReader(reader.path))
    module.kept_record_index(StoreReader(reader.path))
    assert len(built) == 2, "a kept index of other fields is built anew, once"

    repaired = dataclasses.replace(opened.attrs, summary=dataclasses.replace(opened.attrs.summary,
                                                                             completion_id="repaired"))
    monkeypatch.setattr(opened, "attrs", repaired)
    module.kept_record_index(opened)
    assert len(built) == 3, "another completion of the store is indexed anew"


"""The store's value codecs and its row reader, on synthetic arrays and stores (no teacher)."""
import numpy as np
import pytest
import torch
import zarr

from conftest import synthetic_store
from ldcache.errors import BadInputError
from ldcache.store.codec import ValueCodec


def _edge_kl(exact: np.ndarray, stored: np.ndarray, temperature: float) -> float:
    """Mean KL(p_exact || p_stored) per edge, p = softmax over the bins at this temperature."""
    p = torch.log_softmax(torch.from_numpy(exact).double().reshape(-1, 17) / temperature, -1)
    q = torch.log_softmax(torch.from_numpy(stored).double().reshape(-1, 17) / temperature, -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def _teacher_like_logits(rows: int, classes: int) -> np.ndarray:
    """Peaked edge distributions (a trained GFL's ranges reach about 40) and background-like class logits."""
    rng = np.random.default_rng(0)
    bins = np.arange(17)
    centre = rng.uniform(0, 16, (rows, 4, 1))
    sharpness = rng.uniform(0.05, 0.6, (rows, 4, 1))  # ranges up to about 40, as measured
    edges = -sharpness * (bins - centre) ** 2 / 4 + rng.normal(0, 0.3, (rows, 4, 17))
    classes = rng.normal(-6, 2, (rows, classes))
    return np.concatenate([edges.reshape(rows, -1), classes], axis=1).astype(np.float32)


def test_q8_keeps_the_edge_kl_under_the_bound_and_class_logits_as_fp16():
    values = _teacher_like_logits(2000, 80)
    codec = ValueCodec("q8", 17, 80)
    stored = codec.encode(values)
    assert stored.dtype == np.uint8 and stored.shape == (2000, 8 + 68 + 160) == (2000, codec.width)
    decoded = codec.decode(stored)
    assert decoded.shape == values.shape
    assert _edge_kl(values[:, :68], decoded[:, :68], 10.0) < 1e-5
    assert 0 < _edge_kl(values[:, :68], decoded[:, :68], 1.0) < 1e-3  # lossy, and worse at low T
    np.testing.assert_array_equal(decoded[:, 68:], values[:, 68:].astype(np.float16).astype(np.float32))


def test_q8_step_floor_bounds_the_kl_and_leaves_few_codes_on_narrow_edges():
    from ldcache.store.codec import Q8_MIN_STEP

    rng = np.random.default_rng(2)
    narrow = rng.normal(0, 0.7, (500, 68 + 3)).astype(np.float32)  # a random-weight head's ranges
    codec = ValueCodec("q8", 17, 3)
    stored = codec.encode(narrow)
    steps = np.abs(stored[:, :8].view(np.float16))  # the sign bit marks delta rows
    assert np.all(steps == np.float16(Q8_MIN_STEP)), "narrow edges use the floor step"
    decoded = codec.decode(stored)
    codes = -decoded[:, :68] / Q8_MIN_STEP
    assert codes.max() <= np.ceil(np.ptp(narrow[:, :68].reshape(-1, 17), axis=1).max() / Q8_MIN_STEP)
    kl = _edge_kl(narrow[:, :68], decoded[:, :68], 10.0)
    assert 0 < kl <= Q8_MIN_STEP ** 2 / (24 * 10.0 ** 2)  # the bound of the module docstring


def test_q8_stores_smooth_edges_as_deltas_and_noise_as_codes_and_decodes_both_exactly():
    rng = np.random.default_rng(3)
    bins = np.arange(17)
    smooth = -0.3 * (bins - rng.uniform(0, 16, (100, 4, 1))) ** 2  # trained-teacher-like, ranges to 77
    noise = rng.normal(0, 0.7, (100, 4, 17))  # random-weight-head-like
    edges = np.concatenate([smooth, noise]).reshape(200, 68)
    values = np.concatenate([edges, rng.normal(-6, 2, (200, 3))], axis=1).astype(np.float32)
    codec = ValueCodec("q8", 17, 3)
    stored = codec.encode(values)
    step_bits = stored[:, :8].view(np.uint16)
    as_delta = (step_bits[:, 0] & 0x8000) > 0
    assert as_delta[:100].all() and not as_delta[100:].any()
    # The decoded values are the plain codes times the step, whether the row holds deltas or not.
    step = (step_bits & 0x7FFF).view(np.float16).astype(np.float32)[:, :, None]
    below_top = edges.reshape(200, 4, 17).max(axis=2, keepdims=True) - edges.reshape(200, 4, 17)
    plain_codes = np.clip(np.rint(below_top.astype(np.float32) / step), 0, 255)
    np.testing.assert_array_equal(codec.decode(stored)[:, :68], (-plain_codes * step).reshape(200, 68))


def test_q8_decodes_only_the_class_logits_that_were_stored():
    values = _teacher_like_logits(50, 80)
    values[1::2, 68:] = 0  # rows outside Main hold zeros in a `main rows` store
    codec = ValueCodec("q8", 17, 80)
    stored = codec.encode(values)
    main = np.zeros(50, dtype=bool)
    main[::2] = True
    np.testing.assert_array_equal(codec.decode(stored, main), codec.decode(stored))


def test_q8_flat_edges_and_fp16_identity():
    values = np.zeros((3, 68 + 2), dtype=np.float32)
    values[1, :17] = 5.0  # flat edge: every bin equal
    values[2, :17] = np.arange(17) * 1e3  # an edge range near fp16's top
    decoded = ValueCodec("q8", 17, 2).decode(ValueCodec("q8", 17, 2).encode(values))
    assert np.all(decoded[:2, :68] == 0) and np.isfinite(decoded).all()
    assert _edge_kl(values[2, :17], decoded[2, :17], 10.0) < 1e-5
    fp16 = ValueCodec("fp16", 17, 2)
    assert fp16.encode(values).dtype == np.float16 and fp16.width == 70
    with pytest.raises(BadInputError, match="unknown value codec"):
        ValueCodec("int4", 17, 2)


@pytest.mark.parametrize("dtype", ["fp16", "q8"])
def test_reading_rows_equals_what_was_written_across_chunks_and_shards(tmp_path, dtype, private_home):
    from ldcache.store.reader import StoreReader

    counts = np.random.default_rng(1).integers(0, 300, (40, 5))
    counts[8:16] = 0  # a block without rows takes no shard
    path, masks, values = synthetic_store(tmp_path / "s", counts, chunk_rows=128, block_size=8, dtype=dtype)
    reader = StoreReader(path)
    assert reader.blocks.num_blocks == 5 and len(reader.blocks.blocks_with_rows()) == 4
    for record in (0, 3, 7, 20, 39):
        targets = reader.read_record(record)
        start, end = int(reader.ptr[record, 0]), int(reader.ptr[record, -1])
        np.testing.assert_array_equal(targets.masks, masks[start:end])
        np.testing.assert_array_equal(targets.values, values[start:end])
    # Plain zarr reads the same shards.
    group = zarr.open_group(str(path), mode="r")
    start, end = reader.blocks.rows(4)
    np.testing.assert_array_equal(group["masks"][start:end], masks[start:end].view(np.uint8).reshape(end - start, -1))


def test_a_new_completion_replaces_the_stores_earlier_tables_on_the_machine(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from ldcache.store.tables import TABLES, load_tables, tables_folder

    monkeypatch.setenv("LDCACHE_TABLES", str(tmp_path / "tables"))
    reads = []

    def read(names):
        reads.append(names)
        return {name: np.arange(4) + len(reads) for name in names}

    first, other_store = SimpleNamespace(summary=SimpleNamespace(completion_id="first")), str(tmp_path / "other.zarr")
    store = str(tmp_path / "store.zarr")
    mapped = load_tables(store, first, read)["ptr"]
    load_tables(other_store, first, read)
    assert load_tables(store, first, read)["ptr"].tolist() == [1, 2, 3, 4] and len(reads) == 2, "read once"
    assert sorted(reads[0]) == sorted(TABLES)

    repaired = SimpleNamespace(summary=SimpleNamespace(completion_id="repaired"))
    assert load_tables(store, repaired, read)["ptr"].tolist() == [3, 4, 5, 6]
    assert not tables_folder(store, first).exists(), "the earlier completion's tables are gone"
    assert tables_folder(store, repaired).exists() and tables_folder(other_store, first).exists()
    assert mapped.tolist() == [1, 2, 3, 4], "a reader that mapped them keeps its pages"


def test_machines_sharing_a_tables_folder_keep_each_others_tables(tmp_path, monkeypatch):
    """A home on NFS: the same path names a different local store (another completion) on each machine."""
    import socket
    from types import SimpleNamespace

    from ldcache.store import tables

    monkeypatch.setenv("LDCACHE_TABLES", str(tmp_path / "tables"))
    store = str(tmp_path / "store.zarr")
    dumps = {host: SimpleNamespace(summary=SimpleNamespace(completion_id=f"dumped on {host}")) for host in "ab"}
    for host in "ab":
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        tables.load_tables(store, dumps[host], lambda names: {name: np.arange(3) for name in names})
    assert all(tables.tables_folder(store, dumps[host]).exists() for host in "ab")

    repaired = SimpleNamespace(summary=SimpleNamespace(completion_id="repaired on b"))
    tables.load_tables(store, repaired, lambda names: {name: np.arange(3) for name in names})
    assert not tables.tables_folder(store, dumps["b"]).exists(), "b's earlier completion is gone"
    assert tables.tables_folder(store, dumps["a"]).exists(), "a's tables stay: b did not write them"

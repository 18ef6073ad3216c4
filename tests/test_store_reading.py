"""The store's value codecs and its chunk reader, on synthetic arrays (no teacher)."""
import numpy as np
import pytest
import torch
import zarr

from ldcache.row_reader import RowReader
from ldcache.value_codec import ValueCodec


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


def test_q8_flat_edges_and_fp16_identity():
    values = np.zeros((3, 68 + 2), dtype=np.float32)
    values[1, :17] = 5.0  # flat edge: every bin equal
    values[2, :17] = np.arange(17) * 1e3  # an edge range near fp16's top
    decoded = ValueCodec("q8", 17, 2).decode(ValueCodec("q8", 17, 2).encode(values))
    assert np.all(decoded[:2, :68] == 0) and np.isfinite(decoded).all()
    assert _edge_kl(values[2, :17], decoded[2, :17], 10.0) < 1e-5
    fp16 = ValueCodec("fp16", 17, 2)
    assert fp16.encode(values).dtype == np.float16 and fp16.width == 70
    with pytest.raises(ValueError, match="unknown value codec"):
        ValueCodec("int4", 17, 2)


@pytest.mark.parametrize("dtype,width", [("u1", 17), ("f2", 71)])
def test_row_reader_equals_zarr_slicing_across_chunks(tmp_path, dtype, width):
    import fsspec
    from ldcache.store import _compressor

    group = zarr.open_group(str(tmp_path / "g"), mode="w", zarr_format=3)
    array = group.create_array("a", shape=(1000, width), dtype=dtype, chunks=(128, width),
                               compressors=_compressor(np.dtype(dtype).itemsize), fill_value=0)
    data = np.random.default_rng(1).integers(1, 200, (1000, width)).astype(dtype)
    data[256:384] = 0  # one chunk of fill values only: zarr does not write it
    array[:] = data
    assert not (tmp_path / "g/a/c/2/0").exists()
    fs, root = fsspec.core.url_to_fs(str(tmp_path / "g"))
    reader = RowReader(fs, f"{root}/a", array)
    for start, end in [(0, 1), (5, 128), (100, 300), (250, 400), (127, 129), (999, 1000), (0, 1000), (40, 40)]:
        np.testing.assert_array_equal(reader.rows(start, end), data[start:end])

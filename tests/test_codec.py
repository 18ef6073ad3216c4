"""The dump's per-row work (value codecs, statistics, gathering teacher rows) against
straightforward references: the fast versions must give the same bytes and numbers, bit for bit.

The references are the plain numpy and torch versions these functions had before they were made
faster (`bench/dump_proxy_bench.py --stages` times both sides)."""
import numpy as np
import pytest
import torch

from ldcache.domain.rows import gather_logits
from ldcache.store import codec as codec_module
from ldcache.store import statistics
from ldcache.store.codec import Q8_DELTA_BIT, Q8_LEVELS, Q8_MIN_STEP, ValueCodec
from ldcache.store.format import REGION_FLAGS

# Casting NaNs and infinities on purpose: numpy warns about each.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow) encountered:RuntimeWarning")
# Float32 bit patterns numpy and the CPU's vector conversion treat differently if left alone:
# signalling and payload-carrying NaNs (one per array element: a reduction over several NaNs of
# different payloads may propagate either, so the reductions are tested with numpy's NaN).
ODD_NANS = np.array([0x7F800001, 0xFFC00000, 0x7FA00000, 0x7FC00123], np.uint32).view(np.float32)


def _reference_q8_encode(values: np.ndarray, bins: int) -> np.ndarray:
    rows = len(values)
    edges = values[:, :4 * bins].astype(np.float32).reshape(rows, 4, bins)
    below_top = edges.max(axis=2, keepdims=True) - edges
    exact_step = np.maximum(below_top.max(axis=2, keepdims=True) / Q8_LEVELS, Q8_MIN_STEP)
    step = exact_step.astype(np.float16)
    step = np.where(step < exact_step, np.nextafter(step, np.float16(np.inf)), step)
    codes = np.clip(np.rint(below_top / step.astype(np.float32)), 0, Q8_LEVELS).astype(np.uint8)
    as_delta = _reference_deltas_are_cheaper(codes)
    codes[as_delta] = np.diff(codes[as_delta], axis=2, prepend=np.uint8(0))
    step_bits = step.reshape(rows, 4).view(np.uint16)
    step_bits[as_delta, 0] |= Q8_DELTA_BIT
    classes = np.ascontiguousarray(values[:, 4 * bins:]).astype(np.float16)
    return np.concatenate([step_bits.view(np.uint8), codes.reshape(rows, -1), classes.view(np.uint8)], axis=1)


def _reference_deltas_are_cheaper(codes: np.ndarray) -> np.ndarray:
    """Per row of [R, 4, bins] codes: sum |bin-to-bin differences| < sum |codes - median|."""
    codes = codes.astype(np.int16)
    deltas = np.abs(np.diff(codes, axis=2, prepend=0)).sum(axis=(1, 2))
    spread = np.abs(codes - np.median(codes.reshape(len(codes), -1), axis=1)[:, None, None]).sum(axis=(1, 2))
    return deltas < spread


def _reference_q8_decode(stored: np.ndarray, bins: int, num_classes: int, class_rows=None) -> np.ndarray:
    rows, split = len(stored), 8 + 4 * bins
    step_bits = stored[:, :8].view(np.uint16)
    as_delta = (step_bits[:, 0] & Q8_DELTA_BIT) > 0
    step = (step_bits & ~Q8_DELTA_BIT).view(np.float16).astype(np.float32)
    codes = stored[:, 8:split].reshape(rows, 4, bins)
    codes = np.where(as_delta[:, None, None], np.cumsum(codes, axis=2, dtype=np.uint8), codes)
    out = np.zeros((rows, 4 * bins + num_classes), np.float32)
    out[:, :4 * bins] = (codes * -step[:, :, None]).reshape(rows, -1)
    keep = np.ones(rows, bool) if class_rows is None else class_rows
    out[keep, 4 * bins:] = stored[keep, split:].view(np.float16)
    return out


def _reference_edge_entropy(reg_logits: np.ndarray, tau: float = 1.0) -> np.ndarray:
    z = reg_logits.astype(np.float32) / np.float32(tau)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=-1)
    return np.log(total) - (e * z).sum(axis=-1) / total


def _reference_partial_statistics(flags, values, levels, num_levels, bins) -> np.ndarray:
    edges = statistics.entropy_bin_edges(bins)
    entropy = _reference_edge_entropy(values[:, :4 * bins].reshape(len(values), 4, bins)).mean(axis=1, dtype=np.float64)
    out = np.zeros((num_levels, statistics.stats_width()))
    for level in range(num_levels):
        sel = levels == level
        out[level, :statistics.ENTROPY_BINS] = np.histogram(entropy[sel], bins=edges)[0]
        out[level, statistics.ENTROPY_BINS:statistics.ENTROPY_BINS + 2] = entropy[sel].sum(), sel.sum()
        out[level, statistics.ENTROPY_BINS + 2:] = [(flags[sel] & bit > 0).sum() for bit in REGION_FLAGS.values()]
    return out


def _reference_gather_logits(cls_scores, bbox_preds, index, level_rows, grid) -> torch.Tensor:
    parts = []
    for cls, reg, rows, (h, w) in zip(cls_scores, bbox_preds, level_rows, grid):
        loc = torch.from_numpy(rows["loc"].astype(np.int64))
        reg_rows = reg[index, :, :h, :w].reshape(reg.shape[1], -1)[:, loc]
        cls_rows = cls[index, :, :h, :w].reshape(cls.shape[1], -1)[:, loc]
        parts.append(torch.cat([reg_rows, cls_rows]).t())
    return torch.cat(parts).float()


def _logits(rng: np.random.Generator, rows: int, bins: int, classes: int) -> np.ndarray:
    """Teacher-like rows of every kind the codec treats apart: noise at several ranges, smooth
    edges (stored as deltas), flat and very wide edges, ties, and non-finite values."""
    kinds = [
        rng.normal(0, 0.7, (rows, 4, bins)),  # a random-weight head: narrow, floor step
        rng.normal(0, 3, (rows, 4, bins)),
        rng.normal(0, 40, (rows, 4, bins)),  # ranges over 255/16: a coarser step
        -rng.uniform(0.05, 0.6, (rows, 4, 1)) * (np.arange(bins) - rng.uniform(0, bins - 1, (rows, 4, 1))) ** 2,
        np.round(rng.normal(0, 2, (rows, 4, bins)) * 4) / 4,  # many ties at exact steps
        np.full((rows, 4, bins), 5.0),  # flat edges
    ]
    edges = np.concatenate(kinds)[rng.permutation(rows * len(kinds))]
    values = np.concatenate([edges.reshape(len(edges), -1), rng.normal(-6, 2, (len(edges), classes))], axis=1)
    values = values.astype(np.float32)
    values[1, 3] = np.nan  # infinite edges: see test_q8_infinite_edges_decode_as_the_reference
    # Class logits that fp16 overflows, flushes, rounds at a tie or holds as subnormals.
    specials = [np.nan, np.inf, 1e6, 1e-8, -0.0, 65520.0, 6.1e-5, 2.0 ** -25]
    values[4, 4 * bins:4 * bins + len(specials)] = specials[:classes]
    return values


@pytest.mark.parametrize("bins,classes", [(17, 80), (8, 3), (5, 0)])
def test_q8_encode_and_decode_equal_the_reference(monkeypatch, bins, classes):
    monkeypatch.setattr(codec_module, "Q8_CHUNK_ROWS", 97)  # several chunks, one of them short
    rng = np.random.default_rng(bins)
    values = _logits(rng, 60, bins, classes)
    codec = ValueCodec("q8", bins, classes)
    stored = codec.encode(values)
    expected = _reference_q8_encode(values, bins)
    np.testing.assert_array_equal(stored, expected)
    as_float64 = values.astype(np.float64)
    np.testing.assert_array_equal(codec.encode(as_float64), _reference_q8_encode(as_float64, bins))
    np.testing.assert_array_equal(codec.encode(np.asfortranarray(values)), expected)
    for class_rows in (None, rng.random(len(stored)) < 0.5):
        decoded = codec.decode(stored, class_rows)
        reference = _reference_q8_decode(stored, bins, classes, class_rows)
        np.testing.assert_array_equal(decoded.view(np.uint32), reference.view(np.uint32))
    assert codec.encode(values[:0]).shape == (0, codec.width)
    assert codec.decode(stored[:0]).shape == (0, codec.num_values)


def test_q8_infinite_edges_decode_as_the_reference():
    """An edge whose top is +inf has a NaN step (inf - inf) in both encoders; which NaN (its sign
    bit) depends on the order a max reduction meets the NaNs in, which differs. The values decode
    alike."""
    values = _logits(np.random.default_rng(4), 10, 17, 3)
    values[2, 18], values[3, 40] = np.inf, -np.inf
    codec = ValueCodec("q8", 17, 3)
    stored, expected = codec.encode(values), _reference_q8_encode(values, 17)
    np.testing.assert_array_equal(stored[:, 8:], expected[:, 8:])
    steps, expected_steps = stored[:, :8].view(np.float16), expected[:, :8].view(np.float16)
    np.testing.assert_array_equal(steps, expected_steps)  # NaN equals NaN here, whatever its sign
    assert np.isnan(steps[2, 1]) and np.isinf(steps[3, 2])
    np.testing.assert_array_equal(codec.decode(stored), _reference_q8_decode(expected, 17, 3))


def test_q8_chooses_deltas_as_the_median_rule_does_on_adversarial_codes():
    rng = np.random.default_rng(7)
    codes = [rng.integers(0, 256, (500, 4, 17)), rng.integers(0, 3, (500, 4, 17)),  # ties around the median
             np.repeat(rng.integers(0, 256, (500, 1, 1)), 68, axis=2).reshape(500, 4, 17),  # all equal
             np.cumsum(rng.integers(0, 3, (500, 4, 17)), axis=2)]  # smooth: deltas win
    codes = np.concatenate(codes).astype(np.uint8)
    fast = codec_module._deltas_are_cheaper(np.ascontiguousarray(codes.transpose(1, 2, 0)))
    np.testing.assert_array_equal(fast, _reference_deltas_are_cheaper(codes))
    assert 0 < fast.mean() < 1


def test_fp16_encode_is_numpys_cast_bit_for_bit():
    rng = np.random.default_rng(1)
    values = _logits(rng, 40, 17, 80)
    values[6, :len(ODD_NANS)] = ODD_NANS
    values[7, :5] = [65519.0, 65520.0, 1e-7, -1e-8, 2.0 ** -24 * 1.5]  # overflow, subnormal and tie roundings
    codec = ValueCodec("fp16", 17, 80)
    for array in (values, values[:, ::-1], values[::2], np.asfortranarray(values), values.astype(np.float64)):
        stored = codec.encode(array)
        assert stored.dtype == np.float16
        np.testing.assert_array_equal(stored.view(np.uint16), array.astype(np.float16).view(np.uint16))
    readonly = values.copy()
    readonly.flags.writeable = False
    np.testing.assert_array_equal(codec.encode(readonly).view(np.uint16), values.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_statistics_equal_the_reference(monkeypatch, dtype):
    monkeypatch.setattr(statistics, "STATS_CHUNK_ROWS", 101)
    rng = np.random.default_rng(2)
    values = _logits(rng, 80, 17, 80).astype(dtype)
    flags = rng.integers(0, 8, len(values)).astype(np.uint8)
    levels = rng.integers(-1, 5, len(values))  # -1: padding rows between blocks
    reg = values[:, :68].reshape(-1, 4, 17)
    for tau in (1.0, 2.5):
        np.testing.assert_array_equal(statistics.edge_entropy(reg, tau), _reference_edge_entropy(reg, tau))
    np.testing.assert_array_equal(statistics.edge_entropy(reg[:7, 0]), _reference_edge_entropy(reg[:7, 0]))
    np.testing.assert_array_equal(statistics.partial_statistics(flags, values, levels, 5, 17),
                                  _reference_partial_statistics(flags, values, levels, 5, 17))
    ptr = np.array([[0, 30, 60, 90, 100, 110], [128, 200, 300, 400, 450, 480]])
    rows = np.arange(20, 20 + len(values))
    np.testing.assert_array_equal(
        statistics.rows_statistics(flags, values, ptr, 20, 17),
        _reference_partial_statistics(flags, values, statistics.row_levels(ptr, rows), 5, 17))


def test_gather_logits_equals_the_reference_with_and_without_batch_padding():
    from ldcache.store.format import MASK_DTYPE

    rng = np.random.default_rng(3)
    grid = [(20, 34), (10, 17), (5, 9), (3, 5), (2, 3)]
    level_rows = []
    for h, w in grid:
        rows = np.zeros(int(rng.integers(0, h * w)), MASK_DTYPE)  # a level may have no rows
        rows["loc"] = np.sort(rng.choice(h * w, len(rows), replace=False))
        level_rows.append(rows)
    for pad in (0, 3):  # batch padding: the maps are larger than this image's grid
        cls_scores = [torch.randn(2, 80, h + pad, w + pad) for h, w in grid]
        bbox_preds = [torch.randn(2, 68, h + pad, w + pad) for h, w in grid]
        for index in (0, 1):
            got = gather_logits(cls_scores, bbox_preds, index, level_rows, grid)
            assert got.dtype == torch.float32 and got.is_contiguous()
            assert torch.equal(got, _reference_gather_logits(cls_scores, bbox_preds, index, level_rows, grid))
    half = [m.half() for m in cls_scores], [m.half() for m in bbox_preds]
    assert torch.equal(gather_logits(*half, 1, level_rows, grid), _reference_gather_logits(*half, 1, level_rows, grid))

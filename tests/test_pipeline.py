"""grain pipelines: packing, shuffling, mixing, SFT rows, sharded batches and exact resume."""

import json
import math

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from data import pipeline

EOS = 3


def _docs(seed, n, lo, hi, max_len):
    """`n` documents of tokens in [lo, hi), 1..max_len tokens, each ending with EOS."""
    rng = np.random.default_rng(seed)
    return [
        np.append(rng.integers(lo, hi, rng.integers(1, max_len + 1)), EOS).astype(np.int32)
        for _ in range(n)
    ]


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def _segments(row):
    """(start, stop) of each segment of a row, in order."""
    seg = row["segment_ids"]
    return [tuple(np.flatnonzero(seg == s)[[0, -1]] + [0, 1]) for s in range(1, seg.max() + 1)]


def _check_row(row, seq_len, lm=True):
    """Contiguous segments 1..n, padding only at the end, positions restart per segment,
    targets never reach past a segment except at its last token; pretraining (lm) learns every
    target inside a segment."""
    for k in pipeline.ROW_KEYS:
        assert row[k].shape == (seq_len,) and row[k].dtype == np.int32, k
    seg = row["segment_ids"]
    used = int(np.count_nonzero(seg))
    assert np.all(seg[:used] > 0) and np.all(seg[used:] == 0)
    assert np.all(np.diff(seg[:used]) >= 0) and np.all(np.diff(seg[:used]) <= 1)
    assert np.all(row["loss_mask"][used:] == 0) and np.all(row["tokens"][used:] == 0)
    for a, b in _segments(row):
        np.testing.assert_array_equal(row["positions"][a:b], np.arange(b - a))
        inner = slice(a, b - 1)  # targets inside the segment are its own next tokens
        np.testing.assert_array_equal(row["targets"][inner], row["tokens"][a + 1 : b])
        assert not lm or np.all(row["loss_mask"][inner] == 1)


def _stream(rows):
    """The packed rows read back as one token stream (with targets and loss mask)."""
    keep = [r["segment_ids"] > 0 for r in rows]
    return [np.concatenate([r[k][m] for r, m in zip(rows, keep, strict=True)])
            for k in ("tokens", "targets", "loss_mask")]


def _split_docs(tokens):
    ends = np.flatnonzero(tokens == EOS) + 1
    return [tuple(d) for d in np.split(tokens, ends)[:-1]]


def _mesh():
    return jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)


# --------------------------------------------------------------------------------------------
# Pretraining rows
# --------------------------------------------------------------------------------------------


def test_lm_packing_covers_each_document_once_per_epoch():
    docs = _docs(0, 13, 4, 60, 30)
    seq_len = 16
    total = sum(len(d) for d in docs)
    rows = _take(pipeline.make_lm_dataset({"web": docs}, None, seq_len, seed=0),
                 2 * math.ceil(total / seq_len) + 2)
    for row in rows:
        _check_row(row, seq_len)
        for a, b in _segments(row):  # a segment never holds parts of two documents
            assert EOS not in row["tokens"][a : b - 1]
    tokens, targets, loss_mask = _stream(rows)
    # Cut documents keep their true next token as target across the row boundary.
    learn = loss_mask[:-1] == 1
    np.testing.assert_array_equal(targets[:-1][learn], tokens[1:][learn])
    np.testing.assert_array_equal(loss_mask == 0, tokens == EOS)
    read = _split_docs(tokens)
    want = sorted(tuple(d) for d in docs)
    epoch1, epoch2 = read[:13], read[13:26]
    assert sorted(epoch1) == want and sorted(epoch2) == want
    assert epoch1 != epoch2, "each epoch must be reshuffled"
    assert epoch1 != [tuple(d) for d in docs], "documents must be shuffled"


def test_lm_shuffle_is_deterministic_by_seed():
    docs = {"web": _docs(1, 20, 4, 60, 10)}
    a = _take(pipeline.make_lm_dataset(docs, None, 8, seed=5), 6)
    b = _take(pipeline.make_lm_dataset(docs, None, 8, seed=5), 6)
    c = _take(pipeline.make_lm_dataset(docs, None, 8, seed=6), 6)
    tokens = lambda rows: np.stack([r["tokens"] for r in rows])
    np.testing.assert_array_equal(tokens(a), tokens(b))
    assert not np.array_equal(tokens(a), tokens(c))


def test_lm_mixture_follows_token_weights():
    # Source "b" has documents ~4x longer: the mixer must draw its documents ~4x less often.
    docs = {"a": _docs(2, 50, 4, 50, 8), "b": _docs(3, 20, 50, 100, 32)}
    weights = {"a": 0.7, "b": 0.3}
    rows = _take(pipeline.make_lm_dataset(docs, weights, 32, seed=0), 400)
    tokens = np.concatenate([r["tokens"] for r in rows])
    content = tokens[tokens != EOS]
    frac_a = np.mean(content < 50)
    # EOS tokens are shared; compare content tokens against content-token proportions.
    mean_content = {k: np.mean([len(d) - 1 for d in v]) for k, v in docs.items()}
    mean_len = {k: np.mean([len(d) for d in v]) for k, v in docs.items()}
    share = {k: weights[k] * mean_content[k] / mean_len[k] for k in docs}
    assert frac_a == pytest.approx(share["a"] / sum(share.values()), abs=0.03)
    only_a = _take(pipeline.make_lm_dataset(docs, {"a": 1.0, "b": 0.0}, 32, seed=0), 20)
    assert all(np.all(r["tokens"] < 50) for r in only_a), "weight 0 must drop a source"


def test_lm_eval_is_one_ordered_finite_pass():
    docs = {"a": _docs(4, 7, 4, 50, 12), "b": _docs(5, 5, 50, 100, 12)}
    seq_len = 16
    rows = list(pipeline.make_lm_eval_dataset(docs, seq_len))
    total = sum(len(d) for v in docs.values() for d in v)
    assert len(rows) == math.ceil(total / seq_len)
    for row in rows:
        _check_row(row, seq_len)
    tokens, _, _ = _stream(rows)
    np.testing.assert_array_equal(tokens, np.concatenate(docs["a"] + docs["b"]))
    assert list(pipeline.make_lm_eval_dataset(docs, seq_len))[-1]["tokens"].tolist() == \
        rows[-1]["tokens"].tolist()


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="'web' has no documents"):
        pipeline.make_lm_dataset({"web": []}, None, 8, 0)
    with pytest.raises(ValueError, match="weights name"):
        pipeline.make_lm_dataset({"web": _docs(0, 2, 4, 9, 3)}, {"wiki": 1.0}, 8, 0)
    with pytest.raises(ValueError, match="data.seq_len"):
        pipeline.make_lm_dataset({"web": _docs(0, 2, 4, 9, 3)}, None, 1, 0)


# --------------------------------------------------------------------------------------------
# SFT rows
# --------------------------------------------------------------------------------------------


def _conversations(seed, n, marker, max_len):
    """Conversation i starts with the unique token marker+i; mask = random assistant spans."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(2, max_len + 1))
        ids = np.r_[marker + i, rng.integers(8, 100, length - 1)].astype(np.int32)
        mask = np.repeat(rng.integers(0, 2, length // 2 + 1), 2)[:length].astype(np.int32)
        mask[0] = 0
        out.append((ids, mask))
    return out


def _check_sft_row(row, seq_len, by_marker):
    """Every segment is one whole conversation (truncated to seq_len), never split."""
    _check_row(row, seq_len, lm=False)
    seen = []
    for a, b in _segments(row):
        ids, mask = by_marker[int(row["tokens"][a])]
        n = min(len(ids), seq_len)
        assert b - a == n, "a conversation was split or merged"
        np.testing.assert_array_equal(row["tokens"][a:b], ids[:n])
        m = min(len(ids) - 1, n)
        np.testing.assert_array_equal(row["targets"][a : a + m], ids[1 : m + 1])
        np.testing.assert_array_equal(row["loss_mask"][a : a + m], mask[1 : m + 1])
        assert np.all(row["loss_mask"][a + m : b] == 0)
        seen.append(int(row["tokens"][a]))
    return seen


def test_sft_rows_keep_conversations_whole_and_mask_on_assistant_targets():
    seq_len = 24
    convs = _conversations(0, 30, 1000, 30)
    by_marker = {int(ids[0]): (ids, mask) for ids, mask in convs}
    expected_trunc = sum(len(ids) > seq_len for ids, _ in convs)
    assert expected_trunc > 0
    ds, n_trunc = pipeline.make_sft_dataset({"chat": convs}, None, seq_len, seed=0, train=False)
    assert n_trunc == expected_trunc
    seen = [m for row in ds for m in _check_sft_row(row, seq_len, by_marker)]
    assert sorted(seen) == sorted(by_marker), "eval pass must hold every conversation once"
    train_ds, _ = pipeline.make_sft_dataset({"chat": convs}, None, seq_len, seed=0)
    train_seen = [m for row in _take(train_ds, 40) for m in _check_sft_row(row, seq_len, by_marker)]
    assert train_seen[: len(seen)] != seen, "training rows must be shuffled"


def test_sft_mixture_follows_conversation_weights():
    sets = {"chat": _conversations(1, 40, 1000, 10), "tasks": _conversations(2, 40, 2000, 10)}
    ds, _ = pipeline.make_sft_dataset(sets, {"chat": 1.0, "tasks": 3.0}, 32, seed=0)
    markers = np.array([r["tokens"][a] for r in _take(ds, 150) for a, _ in _segments(r)])
    assert np.mean(markers >= 2000) == pytest.approx(0.75, abs=0.04)


# --------------------------------------------------------------------------------------------
# Global batches and resume
# --------------------------------------------------------------------------------------------


def test_batches_are_global_arrays_sharded_on_the_batch_axes():
    mesh = _mesh()
    docs = {"web": _docs(6, 30, 4, 60, 20)}
    ds = pipeline.make_lm_dataset(docs, None, 16, seed=0)
    batch = next(pipeline.make_batch_iterator(ds, 8, mesh))
    rows = _take(ds, 8)
    want = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
    for k in pipeline.ROW_KEYS:
        arr = batch[k]
        assert isinstance(arr, jax.Array) and arr.shape == (8, 16) and arr.dtype == np.int32
        assert arr.sharding.is_equivalent_to(want, arr.ndim)
        assert {s.data.shape for s in arr.addressable_shards} == {(2, 16)}
        np.testing.assert_array_equal(np.asarray(arr), np.stack([r[k] for r in rows]))
    np.testing.assert_array_equal(pipeline.process_rows(want, (8, 16)), np.arange(8))


def test_batch_size_must_divide_data_times_fsdp():
    ds = pipeline.make_lm_dataset({"web": _docs(0, 4, 4, 9, 3)}, None, 8, 0)
    with pytest.raises(ValueError, match=r"data\.batch_size=6 .* data x fsdp size 4"):
        pipeline.make_batch_iterator(ds, 6, _mesh())


def _assert_resume_exact(make_ds, k, n_after, mesh):
    """k batches, JSON state, n_after more; a fresh iterator set to that state must match."""
    it = pipeline.make_batch_iterator(make_ds(), 4, mesh)
    for _ in range(k):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(n_after)]
    fresh = pipeline.make_batch_iterator(make_ds(), 4, mesh)
    fresh.set_state(state)
    for w in want:
        got = next(fresh)
        for key in pipeline.ROW_KEYS:
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(w[key]), err_msg=key)
    return state


def test_resume_from_state_matches_uninterrupted_batches():
    mesh = _mesh()
    docs = {"a": _docs(7, 15, 4, 50, 25), "b": _docs(8, 15, 50, 100, 9)}
    make_lm = lambda: pipeline.make_lm_dataset(docs, {"a": 2.0, "b": 1.0}, 16, seed=3)
    states = [_assert_resume_exact(make_lm, k, 2, mesh) for k in (1, 2, 3)]
    # The JSON round trip turns grain's (start, stop) tuples into lists; make sure the
    # mid-document case (a remainder carried into the next row) was exercised.
    assert any(s["remainder_slices"]["tokens"] != [-1, -1] for s in states)
    convs = {"chat": _conversations(3, 25, 1000, 14)}
    make_sft = lambda: pipeline.make_sft_dataset(convs, None, 16, seed=3, num_packing_bins=6)[0]
    sft_state = _assert_resume_exact(make_sft, 2, 3, mesh)
    assert sft_state["next_row"] > 0  # restored from inside a packed group of bins


def test_finite_dataset_ends_with_a_padded_batch():
    docs = {"a": _docs(9, 6, 4, 50, 10)}
    rows = list(pipeline.make_lm_eval_dataset(docs, 8))
    it = pipeline.make_batch_iterator(pipeline.make_lm_eval_dataset(docs, 8), 4, _mesh())
    batches = list(it)
    assert len(batches) == math.ceil(len(rows) / 4)
    last = {k: np.asarray(v) for k, v in batches[-1].items()}
    n_real = len(rows) - 4 * (len(batches) - 1)
    assert np.all(last["segment_ids"][n_real:] == 0) and np.all(last["loss_mask"][n_real:] == 0)
    want = np.stack([r["tokens"] for r in rows[-n_real:]])
    np.testing.assert_array_equal(last["tokens"][:n_real], want)

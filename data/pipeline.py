"""grain input pipelines for every stage: packed rows in, sharded global batches out.

Every row is a dict of int32[L] arrays:
  tokens       token ids
  segment_ids  1, 2, ... per document (or conversation) in the row; 0 on padding
  positions    0, 1, ... restarting at every segment start
  targets      the next token of the same document (0 where there is none)
  loss_mask    1 where `targets` is a real next token to learn, else 0

Targets are made per document before packing (targets_t = doc_{t+1}), so they can never mix
documents: the last token of a document and padding get loss_mask 0.

Pretraining (`make_lm_dataset`) packs concat-then-split (grain's ConcatThenSplitIterDataset):
documents are laid end to end and cut every L tokens. A document cut at a row boundary goes on
as the first segment of the next row with positions RESTARTING at 0 (so positions stay < L,
which learned position tables need); the cut piece keeps its true next token as the target of
its last token, so no token of the corpus is lost to the cut. Attention never crosses the cut.

SFT (`make_sft_dataset`) packs first-fit (grain's FirstFitPackIterDataset): a conversation is
never split; one longer than L keeps its first L tokens.

Training datasets are infinite: each source is shuffled by seed, reshuffled every epoch
(grain's ShuffleMapDataset folds the epoch into the seed), repeated, and sources are
interleaved deterministically in proportion to their weights (grain's MapDataset.mix).
Validation datasets are one finite pass in corpus order: no shuffle, no repeat.

`make_batch_iterator` stacks rows into global batches and hands them to the mesh as jax.Arrays
sharded over ("data", "fsdp") on the batch axis. Every process runs the same deterministic
pipeline and keeps the rows its devices hold, so one JSON iterator state serves all hosts.
"""

import json
from collections.abc import Mapping, Sequence

import grain
import jax
import numpy as np
from grain import experimental as grain_exp
from jax.sharding import NamedSharding, PartitionSpec

ROW_KEYS = ("tokens", "segment_ids", "positions", "targets", "loss_mask")
_PACKED_KEYS = ("tokens", "targets", "loss_mask")  # what the packers see; they add the rest
BATCH_AXES = ("data", "fsdp")
# Data already in memory: grain's reader threads would only fight over the GIL.
_READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


# --------------------------------------------------------------------------------------------
# Per-document features
# --------------------------------------------------------------------------------------------


def _lm_features(doc: np.ndarray) -> dict:
    """tokens / targets / loss_mask of one document; the last token has no target."""
    targets = np.zeros_like(doc)
    targets[:-1] = doc[1:]
    loss_mask = np.ones_like(doc)
    loss_mask[-1] = 0
    return {"tokens": doc, "targets": targets, "loss_mask": loss_mask}


def _sft_features(pair: tuple[np.ndarray, np.ndarray], seq_len: int) -> dict:
    """Conversation → features, truncated to `seq_len` tokens (keeping the start).

    loss_mask_t = mask_{t+1}: predicting token t+1 counts when token t+1 is an assistant token.
    A truncated conversation keeps the target of its last kept token (token seq_len exists).
    """
    ids, mask = pair
    n = min(len(ids), seq_len)
    targets = np.zeros(n, np.int32)
    loss_mask = np.zeros(n, np.int32)
    m = min(len(ids) - 1, n)
    targets[:m] = ids[1 : m + 1]
    loss_mask[:m] = mask[1 : m + 1]
    return {"tokens": ids[:n], "targets": targets, "loss_mask": loss_mask}


def _rename_packed(row: dict) -> dict:
    """grain names the packing outputs `tokens_segment_ids` / `tokens_positions`."""
    return {
        "tokens": row["tokens"],
        "segment_ids": row["tokens_segment_ids"],
        "positions": row["tokens_positions"],
        "targets": row["targets"],
        "loss_mask": row["loss_mask"],
    }


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_seq_len(seq_len: int) -> None:
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"data/pipeline.py: seq_len must be an int >= 2 (data.seq_len), "
                         f"got {seq_len!r}")


def _as_docs(name: str, docs: Sequence) -> list[np.ndarray]:
    if len(docs) == 0:
        raise ValueError(f"data/pipeline.py: source {name!r} has no documents")
    out = []
    for i, doc in enumerate(docs):
        arr = np.asarray(doc)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"data/pipeline.py: source {name!r} document {i} must be a "
                             f"non-empty 1-D integer array, got shape {arr.shape} {arr.dtype}")
        out.append(arr.astype(np.int32, copy=False))
    return out


def _as_conversations(name: str, convs: Sequence) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(convs) == 0:
        raise ValueError(f"data/pipeline.py: conversation set {name!r} is empty")
    out = []
    for i, (ids, mask) in enumerate(convs):
        ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.int32)
        if ids.ndim != 1 or ids.size == 0 or ids.shape != mask.shape:
            raise ValueError(f"data/pipeline.py: conversation set {name!r} item {i}: ids and "
                             f"loss_mask must be non-empty 1-D of equal length, got "
                             f"{ids.shape} and {mask.shape}")
        out.append((ids, mask))
    return out


def _check_weights(names: Sequence[str], weights: Mapping[str, float] | None) -> dict:
    """Weights by name (uniform if None); sources with weight 0 are dropped."""
    if weights is None:
        return dict.fromkeys(names, 1.0)
    if set(weights) != set(names):
        raise ValueError(f"data/pipeline.py: weights name {sorted(weights)} but the sources "
                         f"are {sorted(names)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"data/pipeline.py: weights must be >= 0 with a positive sum, "
                         f"got {dict(weights)}")
    return {n: float(weights[n]) for n in names if weights[n] > 0}


def _source_seed(seed: int, index: int) -> int:
    """An independent uint32 shuffle seed per source (ShuffleMapDataset needs < 2**32)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _mix_infinite(parts: Sequence[Sequence], weights: Sequence[float], seed: int, featurize):
    """Shuffle each part by seed (reshuffled per epoch), repeat forever, interleave by weight."""
    datasets = [
        grain.MapDataset.source(part).shuffle(seed=_source_seed(seed, i)).repeat().map(featurize)
        for i, part in enumerate(parts)
    ]
    if len(datasets) == 1:
        return datasets[0].to_iter_dataset(_READ_OPTIONS)
    return grain.MapDataset.mix(datasets, list(weights)).to_iter_dataset(_READ_OPTIONS)


def _concat_finite(parts: Sequence[Sequence], featurize):
    """One pass over every part in order (validation)."""
    datasets = [grain.MapDataset.source(part) for part in parts]
    ds = datasets[0] if len(datasets) == 1 else grain.MapDataset.concatenate(datasets)
    return ds.map(featurize).to_iter_dataset(_READ_OPTIONS)


# --------------------------------------------------------------------------------------------
# Pretraining
# --------------------------------------------------------------------------------------------


def document_weights(docs_by_source: Mapping[str, Sequence], weights: Mapping[str, float]):
    """Per-document sampling weights that give the requested TOKEN proportions.

    grain mixes element by element; a source whose documents are k times longer must be drawn
    k times less often:  w_doc_s = w_s / mean_len_s, so tokens_s / total ≈ w_s / Σ w.
    """
    return {
        name: w / float(np.mean([len(d) for d in docs_by_source[name]]))
        for name, w in weights.items()
    }


def make_lm_dataset(
    docs_by_source: Mapping[str, Sequence[np.ndarray]],
    weights: Mapping[str, float] | None,
    seq_len: int,
    seed: int,
) -> grain.IterDataset:
    """Infinite packed pretraining rows, sources mixed so that tokens follow `weights`.

    docs_by_source: name → 1-D int token arrays, each a whole document ending with eos.
    weights: name → token proportion (normalised here; None = uniform; 0 drops a source).
    """
    _check_seq_len(seq_len)
    docs = {name: _as_docs(name, d) for name, d in docs_by_source.items()}
    token_w = _check_weights(list(docs), weights)
    doc_w = document_weights(docs, token_w)
    names = list(token_w)
    ds = _mix_infinite([docs[n] for n in names], [doc_w[n] for n in names], seed, _lm_features)
    return _pack_concat_then_split(ds, seq_len)


def make_lm_eval_dataset(
    docs_by_source: Mapping[str, Sequence[np.ndarray]], seq_len: int
) -> grain.IterDataset:
    """One finite pass over every document of every source, in order; the last row is padded."""
    _check_seq_len(seq_len)
    parts = [_as_docs(name, d) for name, d in docs_by_source.items()]
    if not parts:
        raise ValueError("data/pipeline.py: make_lm_eval_dataset got no sources")
    return _pack_concat_then_split(_concat_finite(parts, _lm_features), seq_len)


def _pack_concat_then_split(ds: grain.IterDataset, seq_len: int) -> grain.IterDataset:
    packed = grain_exp.ConcatThenSplitIterDataset(
        ds, length_struct=dict.fromkeys(_PACKED_KEYS, seq_len)
    )
    return packed.map(_rename_packed)


# --------------------------------------------------------------------------------------------
# Supervised fine-tuning
# --------------------------------------------------------------------------------------------


def count_truncated(convs_by_set: Mapping[str, Sequence], seq_len: int) -> dict[str, int]:
    """How many conversations of each set are longer than `seq_len` (and lose their end)."""
    return {name: sum(len(ids) > seq_len for ids, _ in c) for name, c in convs_by_set.items()}


def make_sft_dataset(
    convs_by_set: Mapping[str, Sequence[tuple[Sequence[int], Sequence[int]]]],
    weights: Mapping[str, float] | None,
    seq_len: int,
    seed: int,
    *,
    train: bool = True,
    num_packing_bins: int = 16,
) -> tuple[grain.IterDataset, int]:
    """First-fit packed SFT rows and the number of conversations truncated to `seq_len`.

    convs_by_set: name → rendered conversations (ids, loss_mask) from data/chat.py.
    weights: name → proportion of CONVERSATIONS drawn (None = uniform; 0 drops a set).
    train=True: infinite, shuffled per epoch, mixed by weight, packed bins shuffled by seed.
    train=False: one pass over every set in order (weights and seed unused).
    num_packing_bins: rows filled at once; more bins waste less padding.
    """
    _check_seq_len(seq_len)
    convs = {name: _as_conversations(name, c) for name, c in convs_by_set.items()}
    if not convs:
        raise ValueError("data/pipeline.py: make_sft_dataset got no conversation sets")
    featurize = lambda pair: _sft_features(pair, seq_len)
    if train:
        set_w = _check_weights(list(convs), weights)
        names = list(set_w)
        ds = _mix_infinite([convs[n] for n in names], [set_w[n] for n in names], seed, featurize)
    else:
        names = list(convs)
        ds = _concat_finite([convs[n] for n in names], featurize)
    packed = grain_exp.FirstFitPackIterDataset(
        ds,
        length_struct=dict.fromkeys(_PACKED_KEYS, seq_len),
        num_packing_bins=num_packing_bins,
        seed=seed,
        shuffle_bins=train,
    )
    num_truncated = sum(count_truncated({n: convs[n] for n in names}, seq_len).values())
    return packed.map(_rename_packed), num_truncated


# --------------------------------------------------------------------------------------------
# Global batches on the mesh
# --------------------------------------------------------------------------------------------


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Rows over ("data", "fsdp"), sequence replicated: the layout every stage's batch uses."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))


def process_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> np.ndarray:
    """Global row indices this process's devices hold, in the order that
    `jax.make_array_from_process_local_data` expects its local data: the distinct batch slices
    of the addressable devices, sorted by start (replicas along "tensor" share a slice)."""
    n = global_shape[0]
    spans = {
        (idx[0].start or 0, n if idx[0].stop is None else idx[0].stop)
        for idx in sharding.addressable_devices_indices_map(global_shape).values()
    }
    return np.concatenate([np.arange(a, b) for a, b in sorted(spans)])


def _json_state(state) -> dict:
    """grain state → plain JSON types (numpy scalars → int/float, tuples → lists)."""

    def default(x):
        if isinstance(x, np.generic | np.ndarray):
            return x.tolist()
        raise TypeError(f"data/pipeline.py: grain iterator state holds a {type(x)}: {x!r}")

    return json.loads(json.dumps(state, default=default))


def _grain_state(state):
    """Undo the JSON round trip where grain compares with tuples: ConcatThenSplit tests
    `slice != (-1, -1)`, which a list [-1, -1] would fail (restoring a phantom remainder)."""
    if isinstance(state, dict):
        return {
            k: ({f: tuple(s) for f, s in v.items()} if k == "remainder_slices" else _grain_state(v))
            for k, v in state.items()
        }
    if isinstance(state, list):
        return [_grain_state(v) for v in state]
    return state


class BatchIterator:
    """Global batches of `ROW_KEYS` as jax.Arrays of shape [global_batch_size, L] on `mesh`.

    A finite dataset ends with a batch padded by all-padding rows (segment_ids 0, loss_mask 0),
    so shapes never change and padded rows add nothing to a masked loss.
    `get_state()` is JSON; `set_state(get_state())` on a fresh iterator over the same dataset
    continues with exactly the batches the original would have produced.
    """

    def __init__(self, dataset: grain.IterDataset, global_batch_size: int, mesh):
        n_shards = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
        if global_batch_size <= 0 or global_batch_size % n_shards:
            raise ValueError(
                f"data.batch_size={global_batch_size} must be a positive multiple of the mesh's "
                f"data x fsdp size {n_shards} (data={mesh.shape['data']}, "
                f"fsdp={mesh.shape['fsdp']}): every batch shard needs the same number of rows"
            )
        self.global_batch_size = global_batch_size
        self.sharding = batch_sharding(mesh)
        self._iter = dataset.batch(global_batch_size, drop_remainder=False).__iter__()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        rows = next(self._iter)  # dict of np [b, L]; b < global_batch_size only at the end
        missing = self.global_batch_size - len(rows["tokens"])
        if missing:
            rows = {k: np.pad(v, ((0, missing), (0, 0))) for k, v in rows.items()}
        global_shape = rows["tokens"].shape
        mine = process_rows(self.sharding, global_shape)
        return {
            k: jax.make_array_from_process_local_data(
                self.sharding, np.ascontiguousarray(rows[k][mine], np.int32), global_shape
            )
            for k in ROW_KEYS
        }

    def get_state(self) -> dict:
        return _json_state(self._iter.get_state())

    def set_state(self, state: dict) -> None:
        self._iter.set_state(_grain_state(state))


def make_batch_iterator(dataset: grain.IterDataset, global_batch_size: int, mesh) -> BatchIterator:
    """Iterator of global sharded batches (see BatchIterator); every process calls it alike."""
    return BatchIterator(dataset, global_batch_size, mesh)

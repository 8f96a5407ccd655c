"""Reward-model data: preference pairs rendered to token rows, a resumable pair iterator, and a
batched scorer (used by the reward stage, PPO's evaluation and scripts/score.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from data import chat, pipeline
from model import sharding
from train.distributed import to_host

KEYS = ("tokens", "positions", "segment_ids")


def compute_last_index(segment_ids_BxL):
    """Index of the last real token (segment id != 0) of each row, for left or right padding:
    L − 1 − argmax(reversed row ≠ 0). An all-padding row gives L − 1."""
    real_BxL = segment_ids_BxL != 0
    return real_BxL.shape[1] - 1 - jnp.argmax(real_BxL[:, ::-1], axis=1)


def score_sequences(model, params, batch):
    """Raw reward of each row: the scalar head's output at the row's last real token."""
    scores_BxL = model.apply(
        {"params": params}, batch["tokens"], batch["positions"], batch["segment_ids"]
    )
    last_B = compute_last_index(batch["segment_ids"])
    return jnp.take_along_axis(scores_BxL, last_B[:, None], axis=1)[:, 0]


def render_reply(tok, prompt, response: str, terminated: bool = True, seq_len: int = 0):
    """(ids, truncated) of prompt + reply in the chat format. A reply that never ended has no
    <|end|>; a sequence over seq_len keeps its last seq_len tokens (the reply's end matters)."""
    ids, _ = chat.render_conversation(
        tok, list(prompt) + [{"role": "assistant", "content": response}]
    )
    if not terminated:
        ids = ids[:-1]
    if seq_len and len(ids) > seq_len:
        return ids[-seq_len:], True
    return ids, False


def right_pad(seqs, pad_id: int, length: int) -> dict:
    """numpy {tokens, positions, segment_ids} [N, length]; real tokens segment 1, positions 0.."""
    out = {k: np.zeros((len(seqs), length), np.int32) for k in KEYS}
    out["tokens"][:] = pad_id
    for i, s in enumerate(seqs):
        out["tokens"][i, : len(s)] = s
        out["positions"][i, : len(s)] = np.arange(len(s))
        out["segment_ids"][i, : len(s)] = 1
    return out


def render_side(tok, pairs, side: str, seq_len: int = 0) -> tuple[list, int]:
    """(ids of every pair's `side` reply with its prompt, number truncated). Replies without
    meta["<side>_terminated"] (HH, plain rows) count as finished."""
    out = [
        render_reply(
            tok, p.prompt, getattr(p, side), bool(p.meta.get(f"{side}_terminated", True)), seq_len
        )
        for p in pairs
    ]
    return [ids for ids, _ in out], sum(cut for _, cut in out)


def encode_pairs(tok, pairs, seq_len: int) -> tuple[dict, int]:
    """({chosen_*, rejected_*}: [N, seq_len] int32, number of truncated sequences)."""
    arrays, truncated = {}, 0
    for side in ("chosen", "rejected"):
        seqs, cut = render_side(tok, pairs, side, seq_len)
        arrays.update({f"{side}_{k}": v for k, v in right_pad(seqs, tok.pad_id, seq_len).items()})
        truncated += cut
    return arrays, truncated


def _to_global(rows: dict, mesh) -> dict:
    """numpy [B, L] rows -> global jax.Arrays sharded over the batch axes (every process holds
    the full batch and keeps its own rows, as data/pipeline.py's BatchIterator does)."""
    batch_sh = pipeline.batch_sharding(mesh)
    first = next(iter(rows.values()))
    mine = pipeline.process_rows(batch_sh, first.shape)
    return {
        k: jax.make_array_from_process_local_data(batch_sh, np.ascontiguousarray(v[mine]), v.shape)
        for k, v in rows.items()
    }


def _batch_multiple(mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in pipeline.BATCH_AXES]))


class PairIterator:
    """Endless batches of `batch_size` pairs; each epoch a permutation seeded by (seed, epoch).
    State {"epoch", "index"} is JSON; set_state(get_state()) continues exactly."""

    def __init__(self, arrays: dict, batch_size: int, mesh, seed: int):
        n_shards = _batch_multiple(mesh)
        if batch_size <= 0 or batch_size % n_shards:
            raise ValueError(
                f"data.batch_size={batch_size} pairs must be a positive multiple of "
                f"the mesh's data x fsdp size {n_shards}"
            )
        self.arrays, self.batch_size, self.mesh, self.seed = arrays, batch_size, mesh, seed
        self.n = len(arrays["chosen_tokens"])
        if self.n == 0:
            raise ValueError("no training pairs")
        self.epoch, self.index = 0, 0

    def _perm(self):
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        take = []
        while len(take) < self.batch_size:
            part = self._perm()[self.index : self.index + self.batch_size - len(take)]
            take.extend(part.tolist())
            self.index += len(part)
            if self.index == self.n:
                self.epoch, self.index = self.epoch + 1, 0
        return _to_global({k: v[take] for k, v in self.arrays.items()}, self.mesh)

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class Scorer:
    """Raw rewards of many token sequences: right-padded fixed-shape batches (the last one
    filled with padding rows), one compiled function per (batch_size, seq_len)."""

    def __init__(self, setup, params_sh, batch_size: int, seq_len: int, pad_id: int):
        model, mult = setup.model("scalar"), _batch_multiple(setup.mesh)
        self.batch_size = -(-batch_size // mult) * mult
        self.seq_len, self.pad_id, self.setup = seq_len, pad_id, setup
        self._fn = jax.jit(
            lambda p, b: score_sequences(model, p, b),
            in_shardings=(params_sh, pipeline.batch_sharding(setup.mesh)),
            out_shardings=sharding.replicated(setup.mesh),
        )

    def __call__(self, params, seqs) -> np.ndarray:
        out = []
        for start in range(0, len(seqs), self.batch_size):
            chunk = [s[-self.seq_len :] for s in seqs[start : start + self.batch_size]]
            rows = right_pad(
                chunk + [[]] * (self.batch_size - len(chunk)), self.pad_id, self.seq_len
            )
            with sharding.activate(self.setup.mesh, self.setup.rules):
                scores = self._fn(params, _to_global(rows, self.setup.mesh))
            out.append(to_host(scores)[: len(chunk)])
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

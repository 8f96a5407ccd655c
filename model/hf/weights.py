"""safetensors tensors ↔ jaxchat parameters, one tensor at a time.

jaxchat keeps Hugging Face's module names and its rotate-half RoPE, so a tensor maps to a
parameter by a transpose and a reshape, never a permutation:

    q/k/v_proj.weight [N·H, D]   ↔ kernel [D, N, H]      (bias [N·H] ↔ [N, H])
    o_proj.weight     [D, N·H]   ↔ kernel [N, H, D]      (bias [D])
    gate/up/down_proj.weight [out, in] ↔ kernel [in, out]
    lm_head.weight    [V, D]     ↔ kernel [D, V]
    norms, embed_tokens: as they are

Layers are stacked on a leading axis for nn.scan. Import builds each parameter with
jax.make_array_from_callback on its target sharding: every device's callback reads only the
layers and the slice it holds, so no whole host array is ever put on a process-spanning
sharding. Export gathers one layer's tensor at a time.
"""

import json
import os

import jax
import numpy as np

IGNORED = ("rotary_emb.inv_freq",)  # buffers older checkpoints saved
SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"


class CheckpointMismatch(ValueError):
    pass


def _heads_in(heads):
    return (lambda w: w.T.reshape(w.shape[1], heads, -1),
            lambda k: k.reshape(k.shape[0], -1).T)


def _heads_out(heads):
    return (lambda w: w.T.reshape(heads, -1, w.shape[0]),
            lambda k: k.reshape(-1, k.shape[-1]).T)


_T = (lambda w: w.T, lambda k: k.T)
_ID = (lambda w: w, lambda k: k)


def _bias_in(heads):
    return (lambda b: b.reshape(heads, -1), lambda b: b.reshape(-1))


def layer_map(cfg) -> dict:
    """jaxchat path inside a layer → (HF name inside `model.layers.{i}.`, (to_jax, to_hf))."""
    n, kv = cfg.n_heads, cfg.n_kv_heads
    out = {
        ("input_layernorm", "scale"): ("input_layernorm.weight", _ID),
        ("post_attention_layernorm", "scale"): ("post_attention_layernorm.weight", _ID),
        ("mlp", "gate_proj", "kernel"): ("mlp.gate_proj.weight", _T),
        ("mlp", "up_proj", "kernel"): ("mlp.up_proj.weight", _T),
        ("mlp", "down_proj", "kernel"): ("mlp.down_proj.weight", _T),
        ("self_attn", "q_proj", "kernel"): ("self_attn.q_proj.weight", _heads_in(n)),
        ("self_attn", "k_proj", "kernel"): ("self_attn.k_proj.weight", _heads_in(kv)),
        ("self_attn", "v_proj", "kernel"): ("self_attn.v_proj.weight", _heads_in(kv)),
        ("self_attn", "o_proj", "kernel"): ("self_attn.o_proj.weight", _heads_out(n)),
    }
    if cfg.qkv_bias:
        for name, heads in (("q_proj", n), ("k_proj", kv), ("v_proj", kv)):
            out[("self_attn", name, "bias")] = (f"self_attn.{name}.bias", _bias_in(heads))
    if cfg.o_bias:
        out[("self_attn", "o_proj", "bias")] = ("self_attn.o_proj.bias", _ID)
    return out


def top_map(cfg) -> dict:
    out = {("embed_tokens", "embedding"): ("model.embed_tokens.weight", _ID),
           ("norm", "scale"): ("model.norm.weight", _ID),
           # the reward model's head, as *ForSequenceClassification's score [1, D]; its bias
           # has no tensor there (see hf_interop.export_checkpoint)
           ("score", "kernel"): ("score.weight", _T)}
    if not cfg.tie_embeddings:
        out[("lm_head", "kernel")] = ("lm_head.weight", _T)
    return out


def _key(k) -> str:
    return str(getattr(k, "key", getattr(k, "name", k)))


def plan(cfg, abstract_params, skip=()) -> list:
    """[(path, leaf, [HF names, one per stacked layer or one], (to_jax, to_hf), stacked)]."""
    layers, top, rows = layer_map(cfg), top_map(cfg), []
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
        names = tuple(_key(k) for k in path)
        if names in skip:
            continue
        if names[0] == "layers":  # nn.scan: ("layers", "block", ...) stacked on axis 0
            hf, fns = layers[names[2:]]
            rows.append((names, leaf, [f"model.layers.{i}.{hf}" for i in range(cfg.n_layers)],
                         fns, True))
        elif names[0].startswith("layers_"):
            hf, fns = layers[names[1:]]
            rows.append((names, leaf, [f"model.layers.{names[0][7:]}.{hf}"], fns, False))
        elif names in top:
            hf, fns = top[names]
            rows.append((names, leaf, [hf], fns, False))
        else:
            raise CheckpointMismatch(f"jaxchat parameter {'/'.join(names)} has no Hugging Face "
                                     "tensor")
    return rows


# ------------------------------------------------------------------------------ reading


class SafetensorsReader:
    """Tensors of model.safetensors or of the shards named by model.safetensors.index.json,
    opened lazily (memory-mapped) and read one tensor or one slice at a time."""

    def __init__(self, hf_dir: str):
        from safetensors import safe_open

        self._open, self._files = safe_open, {}
        index = os.path.join(hf_dir, SAFE_INDEX)
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            self.where = {k: os.path.join(hf_dir, v) for k, v in weight_map.items()}
        elif os.path.exists(os.path.join(hf_dir, SAFE_SINGLE)):
            path = os.path.join(hf_dir, SAFE_SINGLE)
            self.where = dict.fromkeys(self._file(path).keys(), path)
        else:
            pickled = [f for f in os.listdir(hf_dir) if f.endswith((".bin", ".pt", ".pth"))]
            hint = (f" (it has {pickled[0]}: pickle checkpoints are never loaded; convert it "
                    "to safetensors with transformers first)") if pickled else ""
            raise FileNotFoundError(f"{hf_dir}: no {SAFE_SINGLE} or {SAFE_INDEX}{hint}")

    def _file(self, path):
        if path not in self._files:
            self._files[path] = self._open(path, framework="numpy")
        return self._files[path]

    def names(self) -> set:
        return {k for k in self.where if not k.endswith(IGNORED)}

    def shape(self, name) -> tuple:
        return tuple(self._file(self.where[name]).get_slice(name).get_shape())

    def read(self, name) -> np.ndarray:
        return self._file(self.where[name]).get_tensor(name)


def check_names(rows, reader, tied: bool):
    """Missing or unexpected tensors, named; the three tied-embedding cases."""
    want = {name for row in rows for name in row[2]}
    have = reader.names()
    if tied:
        have.discard("lm_head.weight")  # tied: HF ignores a saved copy, so do we
    elif "lm_head.weight" not in have:
        raise CheckpointMismatch(
            "tie_word_embeddings is false but the checkpoint has no lm_head.weight")
    missing, extra = sorted(want - have), sorted(have - want)
    if missing:
        raise CheckpointMismatch(f"checkpoint lacks {len(missing)} tensors: {missing[:4]}")
    if extra:
        raise CheckpointMismatch(
            f"checkpoint has {len(extra)} tensors this model does not use: {extra[:4]}")


def import_params(cfg, abstract_params, reader):
    """The params tree of `abstract_params` (ShapeDtypeStructs with shardings) from `reader`."""
    rows = plan(cfg, abstract_params)
    check_names(rows, reader, cfg.tie_embeddings)
    flat = {}
    for names, leaf, hf_names, (to_jax, _), stacked in rows:
        per_layer = leaf.shape[1:] if stacked else leaf.shape
        for hf in hf_names:  # shapes only: nothing is read or allocated
            got = jax.eval_shape(to_jax, jax.ShapeDtypeStruct(reader.shape(hf), np.float32)).shape
            if got != tuple(per_layer):
                raise CheckpointMismatch(
                    f"{hf}: shape {reader.shape(hf)} in the checkpoint gives {got}, but "
                    f"{'/'.join(names)} needs {tuple(per_layer)} (config.json disagrees with "
                    "the weights?)")
        flat[names] = _build(leaf, hf_names, to_jax, stacked, reader)
    return _unflatten(flat)


def _build(leaf, hf_names, to_jax, stacked, reader):
    dtype = leaf.dtype

    def host(i):
        return to_jax(reader.read(hf_names[i])).astype(dtype)

    def callback(index):
        if not stacked:
            return host(0)[index]
        rows = range(*index[0].indices(leaf.shape[0]))
        return np.stack([host(i)[index[1:]] for i in rows])

    return jax.make_array_from_callback(leaf.shape, leaf.sharding, callback)


def _unflatten(flat: dict) -> dict:
    tree = {}
    for names, value in flat.items():
        node = tree
        for k in names[:-1]:
            node = node.setdefault(k, {})
        node[names[-1]] = value
    return tree


# ------------------------------------------------------------------------------ writing


def gather(x) -> np.ndarray:
    """A (possibly multi-process) array on the host of every process."""
    from jax.experimental import multihost_utils

    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def export_tensors(cfg, params):
    """Yields (HF name, host array) one tensor at a time (a stacked parameter layer by layer);
    the reward head's bias is not a tensor of Hugging Face's score layer and is left out."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    for names, _, hf_names, (_, to_hf), stacked in plan(cfg, abstract, skip={("score", "bias")}):
        value = params
        for k in names:
            value = value[k]
        if stacked:
            for i, hf in enumerate(hf_names):
                yield hf, to_hf(gather(value[i]))
        else:
            yield hf_names[0], to_hf(gather(value))


def write_safetensors(tensors, out_dir: str, dtype, max_shard_bytes: int = 2 << 30) -> dict:
    """Sharded model-0000k-of-0000n.safetensors + model.safetensors.index.json, written by
    process 0 shard by shard (a shard is held in memory until written, nothing more)."""
    from safetensors.numpy import save_file

    written, current, size, total = [], {}, 0, 0

    def flush():
        path = os.path.join(out_dir, f".shard-{len(written) + 1:05d}.tmp")
        if jax.process_index() == 0:
            save_file(current, path, metadata={"format": "pt"})
        written.append((path, list(current)))

    for name, array in tensors:
        array = np.ascontiguousarray(array.astype(dtype))
        if current and size + array.nbytes > max_shard_bytes:
            flush()
            current, size = {}, 0
        current[name], size, total = array, size + array.nbytes, total + array.nbytes
    flush()
    weight_map = {}
    for k, (path, names) in enumerate(written, 1):
        fname = f"model-{k:05d}-of-{len(written):05d}.safetensors"
        if jax.process_index() == 0:
            os.replace(path, os.path.join(out_dir, fname))
        weight_map.update(dict.fromkeys(names, fname))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, SAFE_INDEX), "w") as f:
            json.dump(index, f, indent=2)
    return index

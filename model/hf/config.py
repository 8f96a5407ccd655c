"""config.json ↔ ModelConfig for LlamaForCausalLM, Qwen2ForCausalLM and MistralForCausalLM.

Both config forms are read: transformers ≥ 5 writes `rope_parameters` and `dtype`, older files
top-level `rope_theta`, `rope_scaling` and `torch_dtype` (reading one form only silently gives
θ = 10000). Export writes both. Anything jaxchat's model cannot reproduce exactly is refused
with the field named: another architecture or activation, an unknown rope_type, mlp_bias, a
sliding window shorter than the sequence length asked for.
"""

import json
import os

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
                 "MistralForCausalLM": "mistral"}
DEFAULT_THETA = 10000.0  # transformers' default rope_theta for all three
SCALING_KEYS = {"linear": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                           "original_max_position_embeddings")}


class UnsupportedConfig(ValueError):
    pass


def read_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{hf_dir}: no config.json (not a Hugging Face model folder)")
    with open(path) as f:
        return json.load(f)


def architecture(hf: dict, where: str) -> str:
    archs = hf.get("architectures") or []
    known = [a for a in archs if a in ARCHITECTURES]
    if not known:
        raise UnsupportedConfig(
            f"{where}: architectures={archs}: jaxchat imports {sorted(ARCHITECTURES)}")
    return known[0]


def rope_settings(hf: dict, where: str) -> dict:
    """ModelConfig's rope_* fields from either config form."""
    params = hf.get("rope_parameters") or {}
    legacy = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", DEFAULT_THETA))
    scaling = params if params.get("rope_type", params.get("type")) else legacy
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", *SCALING_KEYS):
        raise UnsupportedConfig(
            f"{where}: rope_type={kind!r} is not supported (default, linear, llama3)")
    out = {"rope_theta": float(theta), "rope_type": kind}
    missing = [k for k in SCALING_KEYS.get(kind, ()) if k not in scaling]
    if missing:
        raise UnsupportedConfig(f"{where}: rope_type={kind!r} needs {missing} in rope_scaling")
    if kind in SCALING_KEYS:
        out["rope_factor"] = float(scaling["factor"])
    if kind == "llama3":
        out.update(rope_low_freq_factor=float(scaling["low_freq_factor"]),
                   rope_high_freq_factor=float(scaling["high_freq_factor"]),
                   rope_original_max_len=int(scaling["original_max_position_embeddings"]))
    return out


def source_dtype(hf: dict) -> str:
    return str(hf.get("dtype") or hf.get("torch_dtype") or "float32")


def model_fields(hf: dict, max_seq_len: int, where: str = "config.json") -> dict:
    """The ModelConfig fields of a Hugging Face config (max_seq_len: the working length)."""
    arch = architecture(hf, where)
    if hf.get("hidden_act", "silu") != "silu":
        raise UnsupportedConfig(f"{where}: hidden_act={hf['hidden_act']!r}: only silu (SwiGLU)")
    if hf.get("mlp_bias"):
        raise UnsupportedConfig(f"{where}: mlp_bias=true is not supported")
    heads = int(hf["num_attention_heads"])
    limit = int(hf.get("max_position_embeddings") or 0)
    window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
    if window and max_seq_len > window:
        raise UnsupportedConfig(
            f"{where}: sliding_window={window} is shorter than max_seq_len={max_seq_len}; "
            "sliding-window attention is not implemented: import with --max_seq_len "
            f"{window} or less (within the window the model is exact)")
    attention_bias = bool(hf.get("attention_bias", False))
    return {
        "vocab_size": int(hf["vocab_size"]),
        "d_model": int(hf["hidden_size"]),
        "n_layers": int(hf["num_hidden_layers"]),
        "n_heads": heads,
        "n_kv_heads": int(hf.get("num_key_value_heads") or heads),
        "head_dim": int(hf.get("head_dim") or hf["hidden_size"] // heads),
        "d_ff": int(hf["intermediate_size"]),
        "max_seq_len": int(max_seq_len),
        "max_position_embeddings": limit,
        "sliding_window": int(window or 0),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        # Qwen2 always biases q, k, v (never o); Llama's attention_bias biases all four.
        "qkv_bias": arch == "Qwen2ForCausalLM" or attention_bias,
        "o_bias": arch != "Qwen2ForCausalLM" and attention_bias,
        **rope_settings(hf, where),
    }


def hf_config(cfg, arch: str, dtype: str, extra: dict | None = None,
              head: str = "lm") -> dict:
    """config.json for a ModelConfig, with both the transformers ≥ 5 and the legacy rope keys;
    head "scalar" (a reward model) gives *ForSequenceClassification with one label."""
    if arch not in ARCHITECTURES:
        raise UnsupportedConfig(f"export: architecture {arch!r} not in {sorted(ARCHITECTURES)}")
    if arch == "Qwen2ForCausalLM" and (cfg.o_bias or not cfg.qkv_bias):
        raise UnsupportedConfig("export: Qwen2 has q/k/v biases and no o_proj bias")
    if arch != "Qwen2ForCausalLM" and cfg.qkv_bias != cfg.o_bias:
        raise UnsupportedConfig(
            f"export: {arch} biases q, k, v and o together (attention_bias); this model has "
            f"qkv_bias={cfg.qkv_bias}, o_bias={cfg.o_bias}: export as Qwen2ForCausalLM")
    rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type in SCALING_KEYS:
        rope["factor"] = cfg.rope_factor
    if cfg.rope_type == "llama3":
        rope.update(low_freq_factor=cfg.rope_low_freq_factor,
                    high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_len)
    out = {
        "architectures": [arch],
        "model_type": ARCHITECTURES[arch],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings or cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_parameters": rope,
        "rope_theta": cfg.rope_theta,  # legacy keys: transformers < 5 reads only these
        "rope_scaling": None if cfg.rope_type == "default" else rope,
        "dtype": dtype,
        "torch_dtype": dtype,
    }
    if arch == "Qwen2ForCausalLM":
        out["use_sliding_window"] = bool(cfg.sliding_window)
        out["sliding_window"] = cfg.sliding_window or None
    else:
        out["attention_bias"] = cfg.qkv_bias
        out["mlp_bias"] = False
    if arch == "MistralForCausalLM":
        out["sliding_window"] = cfg.sliding_window or None
    if head == "scalar":
        out["architectures"] = [arch.replace("ForCausalLM", "ForSequenceClassification")]
        out.update(num_labels=1, id2label={"0": "reward"}, label2id={"reward": 0})
    out.update(extra or {})
    return out

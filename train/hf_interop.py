"""Hugging Face checkpoints in and out of jaxchat run folders (model/hf does the mapping).

    import_checkpoint(hf_dir, workdir)   # → an ordinary run folder: ckpt/0 + config.json
    export_checkpoint(workdir, out_dir)  # → config.json + sharded safetensors + index

An imported folder holds its params as a step-0 checkpoint, the resolved config (model from
config.json, default mesh) and the source's tokenizer files under hf/, so `init_from` of any
stage reads it like a pretraining run. Nothing is written until every tensor has been read and
checked; the checkpoint is written last.
"""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np

from configs import common
from data.tokenizer import check_vocab, load_tokenizer
from model.config import ModelConfig
from model.hf import config as hf_config
from model.hf import weights
from train import setup as setup_lib
from train.checkpoint import Checkpoints, abstract_like, load_params
from train.metrics import write_run_info
from train.reward import load_run_config

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "tokenizer.model", "chat_template.jinja")
DTYPES = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16}


def run_config(fields: dict, compute_dtype: str, mesh: dict | None, hf: dict):
    model = common.model_config("test")
    model.update(fields)
    model.compute_dtype = compute_dtype
    return ml_collections.ConfigDict({
        "stage": "import", "seed": 0, "model": model,
        "mesh": common.mesh_config(**(mesh or {})), "hf": hf,
        "data": {"tokenizer": ""},  # <workdir>/hf when the source has a tokenizer.json
    })


def import_checkpoint(hf_dir: str, workdir: str, max_seq_len: int = 4096,
                      compute_dtype: str | None = None, mesh: dict | None = None):
    """Reads a Llama/Qwen2/Mistral folder into a jaxchat run folder; returns (config, params)."""
    hf = hf_config.read_config(hf_dir)
    where = os.path.join(hf_dir, "config.json")
    arch = hf_config.architecture(hf, where)
    limit = int(hf.get("max_position_embeddings") or max_seq_len)
    fields = hf_config.model_fields(hf, min(max_seq_len, limit), where)
    source = hf_config.source_dtype(hf)
    compute = compute_dtype or ("bfloat16" if source == "bfloat16" else "float32")
    config = run_config(fields, compute, mesh, {"architecture": arch, "dtype": source,
                                                "source": os.path.abspath(hf_dir)})
    has_tokenizer = os.path.exists(os.path.join(hf_dir, "tokenizer.json"))
    if has_tokenizer:  # cheap, so checked before any weight is read
        check_vocab(load_tokenizer(hf_dir), config.model.vocab_size)
    setup = setup_lib.make_setup(config)
    shardings, abstract = setup.param_shardings()
    reader = weights.SafetensorsReader(hf_dir)
    params = weights.import_params(setup.model_cfg, abstract_like(abstract, shardings), reader)
    os.makedirs(workdir, exist_ok=True)
    kept = os.path.join(workdir, "hf")
    os.makedirs(kept, exist_ok=True)
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(hf_dir, name)) and jax.process_index() == 0:
            shutil.copy2(os.path.join(hf_dir, name), os.path.join(kept, name))
    if has_tokenizer:  # the stages and scripts load it from the run folder
        config.data.tokenizer = os.path.abspath(kept)
    ckpt = Checkpoints(os.path.join(workdir, "ckpt"), async_save=False)
    ckpt.save(0, {"params": params}, extras={"hf": config.hf.to_dict()})
    ckpt.close()
    write_run_info(workdir, config)
    return config, params


def head_of(config) -> str:
    """The reward stage's runs carry the scalar head, every other run the LM head."""
    return "scalar" if config.get("stage") == "reward" else "lm"


def read_run(workdir: str):
    """(config, ModelConfig, params, extras) of a run folder's newest checkpoint."""
    if not os.path.exists(os.path.join(workdir, "config.json")):
        raise FileNotFoundError(f"{workdir}: no config.json (not a jaxchat run folder)")
    config = load_run_config(workdir)
    setup = setup_lib.make_setup(config)
    shardings, abstract = setup.param_shardings(head_of(config))
    params, extras = load_params(os.path.join(workdir, "ckpt"), abstract_like(abstract, shardings))
    return config, ModelConfig.from_config(config.model), params, extras


def default_architecture(cfg) -> str:
    return "Qwen2ForCausalLM" if cfg.qkv_bias and not cfg.o_bias else "LlamaForCausalLM"


def reward_fields(config, params, extras) -> dict:
    """config.json entries of an exported reward model. Hugging Face's score layer has no bias,
    so its logit is jaxchat's raw reward minus `score_bias`; PPO's normalised reward is
    gain · (logit + score_bias) + bias. pad_token_id lets it find each row's last token."""
    bias = float(np.asarray(weights.gather(params["score"]["bias"]))[0])
    tok_path = config.data.get("tokenizer", "")
    pad = load_tokenizer(tok_path).pad_id if tok_path and os.path.exists(tok_path) else None
    return {"pad_token_id": pad,
            "jaxchat_reward": {"score_bias": bias, "gain": extras.get("reward_gain", 1.0),
                               "bias": extras.get("reward_bias", 0.0)}}


def export_checkpoint(workdir: str, out_dir: str, architecture: str | None = None,
                      dtype: str | None = None, max_shard_bytes: int = 2 << 30) -> dict:
    """A jaxchat run folder → a Hugging Face folder transformers loads (*ForCausalLM; a reward
    run as *ForSequenceClassification)."""
    config, cfg, params, extras = read_run(workdir)
    hf = extras.get("hf") or (config.get("hf").to_dict() if config.get("hf") else {})
    arch = architecture or hf.get("architecture") or default_architecture(cfg)
    dtype = dtype or hf.get("dtype") or "bfloat16"
    if dtype not in DTYPES:
        raise ValueError(f"export dtype {dtype!r}: float32 or bfloat16 (never float16: "
                         "bf16-trained weights overflow it)")
    head = head_of(config)
    out = hf_config.hf_config(cfg, arch, dtype, reward_fields(config, params, extras)
                              if head == "scalar" else None, head)
    os.makedirs(out_dir, exist_ok=True)
    index = weights.write_safetensors(weights.export_tensors(cfg, params), out_dir,
                                      DTYPES[dtype], max_shard_bytes)
    tok_dir = config.data.get("tokenizer", "")  # a run trained from an import: its hf/ folder
    kept = tok_dir if os.path.isdir(tok_dir) else os.path.join(workdir, "hf")
    if jax.process_index() == 0:
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(kept, name)):
                shutil.copy2(os.path.join(kept, name), os.path.join(out_dir, name))
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(out, f, indent=2)
    return index

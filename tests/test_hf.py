"""Hugging Face interop against transformers itself: tiny random Llama / Qwen2 / Mistral models
built and saved here, imported, compared logit for logit (fp32), exported and reloaded.

transformers and the CPU torch are test-only dependencies (requirements-test.txt)."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from model import sharding
from model.hf import config as hf_config
from model.hf.weights import CheckpointMismatch
from model.transformer import Transformer
from train import hf_interop
from train import setup as setup_lib

VOCAB = 256
CONFIGS = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "mistral": transformers.MistralConfig}
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


def make_hf(folder, family="llama", seed=0, shard="2GB", **overrides):
    """A random tiny HF model saved as safetensors (every weight and bias random, norms ~1)."""
    kw = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
              max_position_embeddings=32768, tie_word_embeddings=False)
    if family == "mistral":
        kw["sliding_window"] = None
    kw.update(overrides)
    config = CONFIGS[family](**kw)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.08)
    model.save_pretrained(folder, max_shard_size=shard)
    return model


def hf_logits(model, tokens, positions):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), position_ids=torch.tensor(positions))
    return out.logits.numpy()


def jax_logits(workdir, tokens, positions):
    config, cfg, params, _ = hf_interop.read_run(workdir)
    setup = setup_lib.make_setup(config)
    model = Transformer(cfg)
    ones = np.ones_like(tokens)
    with sharding.activate(setup.mesh, setup.rules):
        return np.asarray(jax.jit(model.apply)({"params": params}, tokens, positions, ones))


def batches():
    rng = np.random.default_rng(1)
    long = rng.integers(0, VOCAB, (1, 512)).astype(np.int32)  # where RoPE mistakes show
    far = rng.integers(0, VOCAB, (2, 48)).astype(np.int32)  # positions from 30000 on
    return [(long, np.arange(512, dtype=np.int32)[None]),
            (far, np.broadcast_to(30000 + np.arange(48, dtype=np.int32), (2, 48)).copy())]


CASES = {
    "llama-kv1-hd24": ("llama", dict(num_key_value_heads=1, head_dim=24)),
    "llama-kv2-tied-llama3": ("llama", dict(tie_word_embeddings=True, rope_parameters=LLAMA3)),
    "llama-kv4-bias-linear-hd40": ("llama", dict(
        num_key_value_heads=4, head_dim=40, attention_bias=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0})),
    "qwen2-kv2-tied": ("qwen2", dict(tie_word_embeddings=True,
                                     rope_parameters={"rope_type": "default",
                                                      "rope_theta": 1e6})),
    "mistral-kv2": ("mistral", dict()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_import_then_export_match_transformers(tmp_path, case):
    family, overrides = CASES[case]
    model = make_hf(tmp_path / "hf", family, **overrides)
    hf_interop.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "run"))
    hf_interop.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "out"),
                                 dtype="float32")
    back = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", dtype=torch.float32).eval()
    for tokens, positions in batches():
        want = hf_logits(model, tokens, positions)
        ours = jax_logits(str(tmp_path / "run"), tokens, positions)
        np.testing.assert_allclose(ours, want, rtol=0, atol=1e-4, err_msg="HF → jaxchat")
        np.testing.assert_allclose(hf_logits(back, tokens, positions), ours, rtol=0,
                                   atol=1e-4, err_msg="jaxchat → HF")
        np.testing.assert_allclose(hf_logits(back, tokens, positions), want, rtol=0,
                                   atol=1e-5, err_msg="HF → jaxchat → HF")
    exported = json.load(open(tmp_path / "out" / "config.json"))
    assert exported["rope_parameters"]["rope_theta"] == exported["rope_theta"]  # both forms


def test_sharded_checkpoint_on_a_2x2x2_mesh_equals_one_device(tmp_path):
    model = make_hf(tmp_path / "hf", "llama", shard="40KB")
    assert os.path.exists(tmp_path / "hf" / "model.safetensors.index.json")
    run = str(tmp_path / "run")
    hf_interop.import_checkpoint(str(tmp_path / "hf"), run,
                                 mesh={"data": 2, "fsdp": 2, "tensor": 2})
    _, cfg, params, _ = hf_interop.read_run(run)
    spec = params["layers"]["block"]["mlp"]["up_proj"]["kernel"].sharding.spec
    assert tuple(spec) == (None, "fsdp", "tensor")
    tokens, positions = batches()[0]
    sharded = jax_logits(run, tokens, positions)
    one = jax.device_put(jax.device_get(params), jax.devices()[0])  # no mesh, one device
    single = np.asarray(jax.jit(Transformer(cfg).apply)({"params": one}, tokens, positions,
                                                         np.ones_like(tokens)))
    np.testing.assert_allclose(sharded, single, rtol=0, atol=1e-5)
    np.testing.assert_allclose(sharded, hf_logits(model, tokens, positions), rtol=0, atol=1e-4)


def test_both_config_forms_give_the_same_model():
    new = {"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 8,
           "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "max_position_embeddings": 131072,
           "rope_parameters": dict(LLAMA3), "dtype": "bfloat16"}
    old = {k: v for k, v in new.items() if k not in ("rope_parameters", "dtype")}
    scaling = {k: v for k, v in LLAMA3.items() if k != "rope_theta"}
    old.update(rope_theta=500000.0, rope_scaling=scaling, torch_dtype="bfloat16")
    a, b = hf_config.model_fields(new, 4096), hf_config.model_fields(old, 4096)
    assert a == b and a["rope_theta"] == 500000.0 and a["rope_type"] == "llama3"
    assert a["max_position_embeddings"] == 131072 and a["max_seq_len"] == 4096  # cache stays small
    assert hf_config.source_dtype(new) == hf_config.source_dtype(old) == "bfloat16"


def _config_error(tmp_path, **changes):
    make_hf(tmp_path / "hf", "llama")
    path = tmp_path / "hf" / "config.json"
    cfg = json.load(open(path))
    cfg.update(changes)
    json.dump(cfg, open(path, "w"))
    return tmp_path / "hf"


@pytest.mark.parametrize("changes,message", [
    (dict(architectures=["GPT2LMHeadModel"]), "architectures=\\['GPT2LMHeadModel'\\]"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}),
     "rope_type='yarn' is not supported"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(intermediate_size=80), "mlp.*shape .*80"),
    (dict(architectures=["MistralForCausalLM"], sliding_window=1024),
     "sliding_window=1024 is shorter than max_seq_len=4096"),
])
def test_unsupported_or_inconsistent_configs_are_named(tmp_path, changes, message):
    hf = _config_error(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        hf_interop.import_checkpoint(str(hf), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "ckpt")  # nothing written half-way


def _edit_tensors(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_extra_and_tied_lm_head_tensors(tmp_path):
    make_hf(tmp_path / "hf", "llama")
    _edit_tensors(tmp_path / "hf", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointMismatch, match="lacks 1 tensors.*layers.1.mlp.up_proj"):
        hf_interop.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "run"))
    make_hf(tmp_path / "hf2", "llama")
    _edit_tensors(tmp_path / "hf2", lambda t: t.update(extra=np.zeros(3, np.float32)))
    with pytest.raises(CheckpointMismatch, match="does not use: \\['extra'\\]"):
        hf_interop.import_checkpoint(str(tmp_path / "hf2"), str(tmp_path / "run"))
    make_hf(tmp_path / "hf3", "llama")
    _edit_tensors(tmp_path / "hf3", lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointMismatch, match="no lm_head.weight"):
        hf_interop.import_checkpoint(str(tmp_path / "hf3"), str(tmp_path / "run"))
    tied = make_hf(tmp_path / "hf4", "llama", tie_word_embeddings=True)
    _edit_tensors(tmp_path / "hf4", lambda t: t.update(
        {"lm_head.weight": t["model.embed_tokens.weight"].copy()}))  # tied, yet saved
    hf_interop.import_checkpoint(str(tmp_path / "hf4"), str(tmp_path / "run4"))
    tokens, positions = batches()[1]
    np.testing.assert_allclose(jax_logits(str(tmp_path / "run4"), tokens, positions),
                               hf_logits(tied, tokens, positions), rtol=0, atol=1e-4)


def test_a_pickle_only_checkpoint_is_refused(tmp_path):
    folder = tmp_path / "hf"
    make_hf(folder, "llama")
    os.remove(folder / "model.safetensors")
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin: pickle checkpoints are "
                                                "never loaded"):
        hf_interop.import_checkpoint(str(folder), str(tmp_path / "run"))


def test_a_native_jaxchat_model_exports_to_transformers(tmp_path):
    """A model jaxchat trained (no HF origin) exports as Llama and loads in transformers."""
    from configs import common
    from train.checkpoint import Checkpoints
    from train.metrics import write_run_info

    config = hf_interop.run_config(dict(common.model_config("test", vocab_size=VOCAB)),
                                   "float32", None, {})
    setup = setup_lib.make_setup(config)
    params, _ = setup.init_params(3)
    ckpt = Checkpoints(str(tmp_path / "run" / "ckpt"), async_save=False)
    ckpt.save(7, {"params": params})
    ckpt.close()
    write_run_info(str(tmp_path / "run"), config)
    hf_interop.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "out"), dtype="float32")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out",
                                                             dtype=torch.float32).eval()
    assert type(back).__name__ == "LlamaForCausalLM"
    tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 40)).astype(np.int32)
    positions = np.broadcast_to(np.arange(40, dtype=np.int32), (2, 40)).copy()
    np.testing.assert_allclose(hf_logits(back, tokens, positions),
                               jax_logits(str(tmp_path / "run"), tokens, positions),
                               rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="never float16"):
        hf_interop.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "o2"),
                                     dtype="float16")


@pytest.mark.parametrize("case", ["qwen2-kv2-tied", "llama-kv2-tied-llama3"])
def test_greedy_generation_equals_transformers_generate(tmp_path, case):
    """32 greedy tokens from jaxchat's compiled sampler (left-padded batch, KV cache) equal
    transformers' generate on each prompt alone."""
    from model import sampler

    family, overrides = CASES[case]
    model = make_hf(tmp_path / "hf", family, **overrides)
    hf_interop.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "run"),
                                 mesh={"data": 1, "fsdp": -1, "tensor": 1})
    config, cfg, params, _ = hf_interop.read_run(str(tmp_path / "run"))
    setup = setup_lib.make_setup(config)
    rng = np.random.default_rng(7)
    prompts = [rng.integers(1, VOCAB, n).tolist() for n in (5, 9, 13, 3, 17, 8, 11, 6)]
    generate = sampler.make_generate(cfg, 32, greedy=True, stop_ids=(), pad_id=0,
                                     mesh=setup.mesh, rules=setup.rules)
    out = generate(params, *sampler.left_pad(prompts, 0), jax.random.key(0))
    ours = np.asarray(out.tokens_BxT)
    for row, prompt in zip(ours, prompts, strict=True):
        with torch.no_grad():
            theirs = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(
                1, len(prompt)), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                pad_token_id=0)
        assert row.tolist() == theirs[0, len(prompt):].tolist()


def test_an_imported_model_chats_in_its_own_template(tmp_path):
    """scripts.chat on an imported Qwen2 folder with its tokenizer and ChatML template gives
    the reply transformers generates from apply_chat_template (greedy)."""
    from scripts import chat as chat_script
    from tests.test_hf_tokenizer import build_chat_tokenizer

    folder = tmp_path / "hf"
    model = make_hf(folder, "qwen2", vocab_size=512)  # its vocabulary padded past the 402
    build_chat_tokenizer(folder)  # after: its generation_config.json names <|im_end|>
    hf_interop.import_checkpoint(str(folder), str(tmp_path / "run"))
    question = "What is 12 + 7?"
    ours = chat_script.main(["--workdir", str(tmp_path / "run"), "--prompt", question,
                             "--greedy", "--max_new_tokens", "16"])
    # the tokenizer files alone: beside a qwen2 config.json, transformers 5 loads them as
    # Qwen2Tokenizer, which swaps in Qwen's own pre-tokenizer for the one tokenizer.json has
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "run" / "hf")
    prompt = tok.apply_chat_template([{"role": "user", "content": question}],
                                     add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                             max_new_tokens=16, do_sample=False,
                             eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                             pad_token_id=tok.eos_token_id)
    assert ours == tok.decode(out[0, len(prompt):], skip_special_tokens=True)


def test_a_reward_model_exports_as_sequence_classification(tmp_path, tokenizer):
    """A reward run's scalar head → LlamaForSequenceClassification: its logit at each row's
    last token plus the recorded score_bias is jaxchat's raw reward."""
    from configs import common
    from train.checkpoint import Checkpoints
    from train.metrics import write_run_info
    from train.reward_data import right_pad, score_sequences

    config = hf_interop.run_config(dict(common.model_config(
        "test", vocab_size=tokenizer.vocab_size)), "float32", None, {})
    config.stage, config.data.tokenizer = "reward", tokenizer.path
    setup = setup_lib.make_setup(config)
    params, _ = setup.init_params(4, head="scalar")
    params["score"]["bias"] = params["score"]["bias"] + 0.75  # a head bias HF cannot hold
    ckpt = Checkpoints(str(tmp_path / "rm" / "ckpt"), async_save=False)
    ckpt.save(3, {"params": params}, extras={"reward_gain": 2.0, "reward_bias": -1.0})
    ckpt.close()
    write_run_info(str(tmp_path / "rm"), config)
    hf_interop.export_checkpoint(str(tmp_path / "rm"), str(tmp_path / "out"), dtype="float32")
    exported = json.load(open(tmp_path / "out" / "config.json"))
    assert exported["architectures"] == ["LlamaForSequenceClassification"]
    assert exported["jaxchat_reward"] == {"score_bias": pytest.approx(0.75), "gain": 2.0,
                                          "bias": -1.0}
    back = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "out", dtype=torch.float32).eval()
    rng = np.random.default_rng(2)
    seqs = [rng.integers(4, tokenizer.vocab_size, n).tolist() for n in (12, 7, 20, 15)]
    batch = right_pad(seqs, tokenizer.pad_id, 24)
    ours = np.asarray(score_sequences(setup.model("scalar"), params, batch))
    with torch.no_grad():
        theirs = back(input_ids=torch.tensor(np.asarray(batch["tokens"]))).logits[:, 0].numpy()
    np.testing.assert_allclose(theirs + 0.75, ours, rtol=0, atol=1e-4)

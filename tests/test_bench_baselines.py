"""The PyTorch baseline of `scripts.bench train --torch` is the same model: with jaxchat's
weights it gives jaxchat's logits, loss and gradients, so the benchmark compares equal work.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.hf.weights import export_tensors
from model.transformer import Transformer
from scripts import bench_jax as bj
from scripts import bench_torch as bt
from train import losses


def torch_name(hf_name: str) -> str:
    """Hugging Face Llama's tensor names → TorchLlama's (no `model.`, `self_attn.`, `mlp.`)."""
    for prefix in ("model.", "self_attn.", "mlp."):
        hf_name = hf_name.replace(prefix, "")
    return hf_name


def torch_tensors(cfg, tree, rename=lambda name: name) -> dict:
    """A jaxchat parameter (or gradient) tree as torch tensors under Hugging Face's names,
    renamed by `rename`."""
    return {rename(k): torch.from_numpy(np.array(v)) for k, v in export_tensors(cfg, tree)}


@pytest.mark.parametrize("tie", [False, True])
def test_torch_baseline_equals_the_jax_model(tie):
    cfg = bj.model_config("test", tie_embeddings=tie)  # GQA: 4 query heads on 2 kv heads
    _, params, _ = bj.init_params(cfg, bj.make_mesh(), seed=3)
    model = bt.TorchLlama(cfg)
    state = torch_tensors(cfg, params, torch_name)
    if tie:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, strict=True)

    batch = bj.lm_batch(2, 24, cfg.vocab_size, seed=1)
    args = (batch["tokens"], batch["positions"], batch["segment_ids"])
    jax_model = Transformer(cfg)
    logits = jax_model.apply({"params": params}, *args)
    loss_fn = losses.make_lm_loss(jax_model)  # summed over tokens, as train/step.py

    def mean_loss(p):
        total, metrics = loss_fn(p, jax.tree.map(jnp.asarray, batch), jax.random.key(0))
        return total / metrics["weight"]

    loss, grads = jax.value_and_grad(mean_loss)(params)

    tokens = torch.from_numpy(batch["tokens"].astype(np.int64))
    t_logits = model(tokens)
    nll = F.cross_entropy(t_logits.flatten(0, 1),
                          torch.from_numpy(batch["targets"].astype(np.int64)).flatten())
    nll.backward()

    np.testing.assert_allclose(t_logits.detach().numpy(), np.asarray(logits), atol=2e-5)
    np.testing.assert_allclose(float(nll.detach()), float(loss), rtol=1e-5)
    t_grads = {n: p.grad.numpy() for n, p in model.named_parameters()}
    for name, g in torch_tensors(cfg, grads, torch_name).items():  # fp32: 1e-4 of each scale
        g = g.numpy()
        np.testing.assert_allclose(t_grads[name], g, atol=1e-4 * np.abs(g).max(), err_msg=name)


def test_hf_generate_baseline_decodes_what_the_jax_sampler_does():
    """`scripts.bench sample --hf`: Hugging Face's Llama with jaxchat's weights decodes the same
    greedy tokens from the same left-padded prompts, every row the full new-token budget."""
    cfg = bj.model_config("test")
    params = bj.sampling_params(cfg, seed=5)
    hf = bt.hf_llama(cfg)
    hf.load_state_dict(torch_tensors(cfg, params), strict=True)
    prompts = bj.random_prompts(4, 8, cfg.vocab_size, seed=2)
    new_tokens = 6
    hf_out = bt.hf_generate_runner(cfg, prompts, new_tokens, model=hf)()[:, prompts[0].shape[1]:]
    jax_run, _ = bj.jax_generate_runner(cfg, params, prompts, new_tokens)
    np.testing.assert_array_equal(hf_out.numpy(), np.asarray(jax_run().tokens_BxT))

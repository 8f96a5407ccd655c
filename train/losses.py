"""Loss functions of the supervised stages, in the summed form train/step.py expects."""

import jax
import jax.numpy as jnp

from model import vocab_parallel


def logz_and_target(logits_BxLxV, targets_BxL):
    """(log Z, the target's logit) per token, in fp32: -log softmax[target] = log Z − target."""
    logits = logits_BxLxV.astype(jnp.float32)
    logz_BxL = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
    return logz_BxL, target_logit


def head_weight(params, cfg):
    """The LM head as a [D, V] matrix (the embedding table, transposed, when tied)."""
    if cfg.tie_embeddings:
        return params["embed_tokens"]["embedding"].T
    return params["lm_head"]["kernel"]


def make_lm_loss(model, z_loss: float = 0.0):
    """Next-token loss over rows {tokens, positions, segment_ids, targets, loss_mask}; from
    model/vocab_parallel.py when model.vocab_parallel_chunk > 0 (same values).
    z_loss: PaLM's auxiliary term z_loss · log²Z per token (Z the softmax normaliser; 1e-4 in
    PaLM), which keeps the logits from drifting; the "loss" metric stays the cross-entropy
    and "log_z_sq" (mean log²Z) is logged when it is on."""
    chunk = model.cfg.vocab_parallel_chunk

    def token_stats(params, batch):
        """(log Z, target logit) per token, fp32."""
        args = (batch["tokens"], batch["positions"], batch["segment_ids"])
        if not chunk:
            return logz_and_target(model.apply({"params": params}, *args), batch["targets"])
        h_BxLxD = model.apply({"params": params}, *args, hidden=True)
        b, length, d = h_BxLxD.shape
        w = head_weight(params, model.cfg).astype(h_BxLxD.dtype)
        mesh = jax.sharding.get_abstract_mesh()
        lse, target, _ = vocab_parallel.vocab_parallel_stats(
            h_BxLxD.reshape(b * length, d), w, batch["targets"].reshape(-1), mesh, chunk=chunk)
        return lse.reshape(b, length), target.reshape(b, length)

    def loss_fn(params, batch, rng):
        del rng  # no dropout
        mask = batch["loss_mask"].astype(jnp.float32)
        lse_BxL, target_BxL = token_stats(params, batch)
        loss = ((lse_BxL - target_BxL) * mask).sum()
        metrics = {"loss": loss, "weight": mask.sum()}
        if not z_loss:
            return loss, metrics
        log_z_sq = (jnp.square(lse_BxL) * mask).sum()
        return loss + z_loss * log_z_sq, {**metrics, "log_z_sq": log_z_sq}

    return loss_fn

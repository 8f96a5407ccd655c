"""Loss functions of the supervised stages, in the summed form train/step.py expects."""

import jax
import jax.numpy as jnp


def token_cross_entropy(logits_BxLxV, targets_BxL):
    """-log softmax(logits)[target] per token, in fp32."""
    logits = logits_BxLxV.astype(jnp.float32)
    logz_BxL = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
    return logz_BxL - target_logit


def make_lm_loss(model):
    """Next-token loss over rows {tokens, positions, segment_ids, targets, loss_mask}."""

    def loss_fn(params, batch, rng):
        del rng  # no dropout
        logits = model.apply(
            {"params": params}, batch["tokens"], batch["positions"], batch["segment_ids"]
        )
        mask = batch["loss_mask"].astype(jnp.float32)
        nll_BxL = token_cross_entropy(logits, batch["targets"]) * mask
        loss = nll_BxL.sum()
        return loss, {"loss": loss, "weight": mask.sum()}

    return loss_fn

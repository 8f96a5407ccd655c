"""Optimizer: AdamW with linear warmup + cosine decay, global-norm clipping.

Weight decay applies to matrices only (not norms, biases or the scalar head's bias), as in
GPT-2/LLaMA practice. `adam_style="tf"` puts Adam's epsilon where TensorFlow (and OpenAI's
lm-human-preferences) did; the default "pytorch" is optax's placement (see train/rl_math.py).
"""

import jax
import optax


def make_schedule(cfg, total_steps: int):
    warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.lr * cfg.min_lr_ratio,
    )


def _decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    schedule = make_schedule(cfg, total_steps)
    if cfg.adam_style == "pytorch":
        adam = optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.adam_style == "tf":
        from train.rl_math import scale_by_tf_adam

        adam = scale_by_tf_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    else:
        raise ValueError(f"optim.adam_style={cfg.adam_style!r}: expected 'pytorch' or 'tf'")
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm else optax.identity(),
        adam,
        optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask),
        optax.scale_by_learning_rate(schedule),
    )

"""The PPO phases as pure functions of (settings, params, batch); train/ppo_setup.py compiles
them, train/ppo.py drives them, train/rl_math.py holds the math.

Shapes: B rollout rows, P prompt columns (left-padded), T response columns (right-padded),
L = P + T, V vocabulary. One row of the scored sequence:

    [pad pad <bos> <|user|> ... <|end|> <|assistant|> | r0 r1 r2 <|end|> pad pad]
     segment 0   segment 1, positions 0..n-1          | segment 1, positions n.. | segment 0

The output at column P-1+t reads everything up to the last prompt token plus r0..r(t-1), so it
predicts response token t: every per-token quantity of the response (log-probs, entropy,
values) is the slice [:, P-1 : P-1+T] of one full forward ([N+details] code does the same).
`hp` is a train.ppo_setup.Hparams (static settings); sources are cited as in rl_math.
"""

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from model import sharding, vocab_parallel
from model.config import ModelConfig
from model.transformer import Transformer
from train import losses, rl_math


@flax.struct.dataclass
class PPOState:
    """Everything an iteration changes, one pytree (checkpointed whole).

    The policy's fields are named as in TrainState (step, params, opt_state, rng), so
    `train.checkpoint.load_params(<ppo run>/ckpt, ...)` returns the PPO policy like any stage.
    Frozen roles (reference, reward) are NOT in here: they never meet an optimizer.
    """

    step: jax.Array  # int32: PPO iterations done
    params: Any  # actor (policy)
    opt_state: Any  # actor optimizer state
    critic_params: Any
    critic_opt_state: Any
    kl: rl_math.KLControllerState
    rng: jax.Array  # uint32[2] base key; iteration i uses fold_in(key, i) (counter-based)


# --------------------------------------------------------------------------------------------
# Reward functions: (reward_state, batch) -> score_B
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RewardModelScore:
    """Normalised reward-model score at the last response token (ppo.md items 5, 6):

    score_b = gain · RM(sequence_b)[P + length_b − 1] + bias
    reward_state = {"params": scalar-head params, "gain": f32, "bias": f32}. The gain/bias make
    the SFT policy's samples score mean 0, std 1, so β keeps its meaning ([Ziegler19]).
    A test may pass any other callable with this signature (e.g. a toy token count).
    """

    cfg: ModelConfig

    def __call__(self, reward_state, batch):
        raw_BxL = Transformer(self.cfg, head="scalar").apply(
            {"params": reward_state["params"]},
            batch["tokens"],
            batch["positions"],
            batch["segments"],
        )
        raw_B = jnp.take_along_axis(raw_BxL, batch["last_index"][:, None], axis=1)[:, 0]
        return reward_state["gain"] * raw_B + reward_state["bias"]


# --------------------------------------------------------------------------------------------
# Sequences
# --------------------------------------------------------------------------------------------


def assemble(prompt_tokens_BxP, prompt_positions_BxP, prompt_segments_BxP, gen, pad_id):
    """[left-padded prompt | right-padded response] with positions and segments (item 3).

    Response token t of row b sits at position prompt_len_b + t, as in the sampler's cache,
    so the recomputed log-probs equal the sampler's. Padding after the reply is the pad token
    with segment 0 (never <|end|>), so nothing attends to it.
    """
    t = gen.tokens_BxT.shape[1]
    mask_BxT = jnp.arange(t)[None, :] < gen.lengths_B[:, None]
    prompt_len_B = jnp.sum(prompt_segments_BxP != 0, axis=1).astype(jnp.int32)
    response_BxT = jnp.where(mask_BxT, gen.tokens_BxT, pad_id).astype(jnp.int32)
    response_pos_BxT = jnp.where(mask_BxT, prompt_len_B[:, None] + jnp.arange(t)[None, :], 0)
    p = prompt_tokens_BxP.shape[1]
    return {
        "tokens": jnp.concatenate([prompt_tokens_BxP, response_BxT], axis=1),
        "positions": jnp.concatenate([prompt_positions_BxP, response_pos_BxT], axis=1),
        "segments": jnp.concatenate([prompt_segments_BxP, mask_BxT.astype(jnp.int32)], axis=1),
        "response": response_BxT,
        "mask": mask_BxT.astype(jnp.float32),
        "lengths": gen.lengths_B,
        "ended": gen.ended_B,
        "last_index": (p + gen.lengths_B - 1).astype(jnp.int32),
        "sampler_logp": gen.logprobs_BxT * mask_BxT,
    }


def response_columns(hp):
    """(first column, count) of the outputs that predict the response tokens, columns
    P-1 .. P+T-2 (the head_columns of model/transformer.py): the heads run on these T columns
    only, not on the prompt's."""
    return (hp.prompt_len - 1, hp.max_new_tokens)


def response_slice(x_BxL, hp):
    """The response_columns of a full [B, L, ...] output."""
    start, n = response_columns(hp)
    return x_BxL[:, start : start + n]


def _lm_logp(cfg, params, batch, hp, with_entropy=False):
    """Tempered log π(response token) per position, and optionally the per-token entropy;
    from model/vocab_parallel.py when model.vocab_parallel_chunk > 0 (same values, no
    [B, T, V] logits)."""
    args = (batch["tokens"], batch["positions"], batch["segments"])
    if cfg.vocab_parallel_chunk:
        h = Transformer(cfg).apply({"params": params}, *args, hidden=True)
        h_BxTxD = response_slice(h, hp)
        b, t, d = h_BxTxD.shape
        lse, target, ent = vocab_parallel.vocab_parallel_stats(
            h_BxTxD.reshape(b * t, d), losses.head_weight(params, cfg).astype(h.dtype),
            batch["response"].reshape(-1), jax.sharding.get_abstract_mesh(), hp.temperature,
            cfg.vocab_parallel_chunk)
        ent = ent.reshape(b, t) if with_entropy else None
        return (target - lse).reshape(b, t) * batch["mask"], ent
    logits_BxTxV = Transformer(cfg).apply(
        {"params": params}, *args, head_columns=response_columns(hp)
    )
    logp_BxT = rl_math.compute_token_logprobs(logits_BxTxV, batch["response"], hp.temperature)
    ent = rl_math.compute_entropy(logits_BxTxV, hp.temperature) if with_entropy else None
    return logp_BxT * batch["mask"], ent


def _values(cfg, params, batch, hp):
    v_BxT = Transformer(cfg, head="scalar").apply(
        {"params": params},
        batch["tokens"],
        batch["positions"],
        batch["segments"],
        head_columns=response_columns(hp),
    )
    return v_BxT * batch["mask"]


# --------------------------------------------------------------------------------------------
# Phase 2: score (one forward per role)
# --------------------------------------------------------------------------------------------


def score_phase(cfg, hp, reward_fn, actor, reference, critic, reward_state, prompt, gen):
    """Old log-probs (actor), reference log-probs, values (critic), score (reward) — item 1, 2.

    Log-probs are recomputed with logits / T rather than taken from the sampler: the update
    must compare new and old log-probs of the very same computation. Their max difference to
    the sampler's is returned as a health metric (KV-cache vs full forward: ~1e-6 in fp32).
    """
    batch = assemble(*prompt, gen, hp.pad_id)
    mask = batch["mask"]
    batch["old_logp"], entropy_BxT = _lm_logp(cfg, actor, batch, hp, with_entropy=True)
    batch["ref_logp"], _ = _lm_logp(cfg, reference, batch, hp)
    batch["values"] = _values(cfg, critic, batch, hp)
    batch["rm_score"] = reward_fn(reward_state, batch).astype(jnp.float32)
    batch["score"] = (
        batch["rm_score"]
        if hp.eos_penalty is None
        else rl_math.apply_eos_penalty(batch["rm_score"], batch["ended"], hp.eos_penalty)
    )
    stats = {
        "entropy": rl_math.masked_mean(entropy_BxT, mask),
        "logprob_diff_max": jnp.max(jnp.abs(batch["old_logp"] - batch["sampler_logp"]) * mask),
    }
    return batch, stats


# --------------------------------------------------------------------------------------------
# Phase 3: advantages
# --------------------------------------------------------------------------------------------


def advantages_phase(hp, batch, beta):
    """KL-shaped per-token rewards (item 7), optional reward whitening (10), GAE (9), advantage
    whitening (10). `kl_B` comes from the same per-token KL array that shaped the reward."""
    mask = batch["mask"]
    kl_BxT = rl_math.compute_kl(batch["old_logp"], batch["ref_logp"], hp.kl_estimator) * mask
    rewards_BxT, kl_B = rl_math.compute_rewards(
        batch["score"], kl_BxT, mask, beta, clip=hp.reward_clip
    )
    shaped_BxT = (
        rl_math.compute_whiten(rewards_BxT, mask, shift_mean=False)
        if hp.whiten_rewards
        else rewards_BxT
    )
    adv_BxT, returns_BxT = rl_math.compute_gae(shaped_BxT, batch["values"], mask, hp.gamma, hp.lam)
    if hp.whiten_advantages:
        adv_BxT = rl_math.compute_whiten(adv_BxT, mask, shift_mean=True)
    batch = dict(
        batch, kl=kl_BxT, kl_B=kl_B, rewards=rewards_BxT, advantages=adv_BxT, returns=returns_BxT
    )
    stats = {
        "kl": jnp.mean(kl_B),
        "non_score_reward": jnp.mean(
            jnp.sum(rewards_BxT - rl_math.last_token_mask(mask) * batch["score"][:, None], axis=1)
        ),
        "explained_variance": rl_math.compute_explained_variance(
            batch["values"], returns_BxT, mask
        ),
        "return_mean": rl_math.masked_mean(returns_BxT, mask),
        "advantage_std": jnp.sqrt(rl_math.masked_var(adv_BxT, mask)),
    }
    return batch, stats


# --------------------------------------------------------------------------------------------
# Phase 4: update
# --------------------------------------------------------------------------------------------

UPDATE_KEYS = (
    "tokens",
    "positions",
    "segments",
    "response",
    "mask",
    "old_logp",
    "values",
    "advantages",
    "returns",
)


def _policy_loss(cfg, hp, actor, mb):
    """Clipped surrogate − entropy_coef · H (items 11, 13): the actor's part of the PPO loss
    pg_loss + vf_coef · vf_loss − entropy_coef · H. Actor and critic are disjoint trees, so
    each one's gradient comes from its own part alone."""
    logp_BxT, ent_BxT = _lm_logp(cfg, actor, mb, hp, with_entropy=hp.entropy_coef > 0)
    pg_loss, stats = rl_math.compute_policy_loss(
        logp_BxT, mb["old_logp"], mb["advantages"], mb["mask"], hp.clip_eps
    )
    stats["policy_loss"] = pg_loss
    if hp.entropy_coef > 0:
        stats["update_entropy"] = rl_math.masked_mean(ent_BxT, mb["mask"])
        return pg_loss - hp.entropy_coef * stats["update_entropy"], stats
    return pg_loss, stats


def _value_loss(cfg, hp, critic, mb):
    """vf_coef · clipped value loss (item 11): the critic's part of the PPO loss."""
    values_BxT = _values(cfg, critic, mb, hp)
    vf_loss, stats = rl_math.compute_value_loss(
        values_BxT, mb["values"], mb["returns"], mb["mask"], hp.value_clip
    )
    return hp.vf_coef * vf_loss, {**stats, "value_loss": vf_loss}


def _grads(loss_fn, params, mb, grad_accum):
    """Gradient averaged over grad_accum microbatches (mean of microbatch losses, as
    accelerate's accumulation in [N+details]); the minibatch is their concatenation."""
    grad_fn = jax.grad(loss_fn, has_aux=True)
    micro = jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), mb)

    def body(acc, one):
        one = jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(
                x, jax.sharding.PartitionSpec(sharding.BATCH)
            ),
            one,
        )
        return jax.tree.map(lambda a, g: a + g / grad_accum, acc, grad_fn(params, one)), None

    zeros = jax.tree.map(
        jnp.zeros_like, jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro))
    )
    return jax.lax.scan(body, zeros, micro)[0]


def _step(tx, params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def update_phase(cfg, hp, tx_actor, tx_critic, train_actor, state, batch, kl_mean):
    """K epochs × shuffled minibatches × gradient accumulation (item 12); then the KL
    controller step (item 8) with this rollout's KL. Optimizer states hold actor and critic
    only; with train_actor=False (critic warm-up, item 13) the actor is left untouched."""
    key = jax.random.fold_in(iteration_key(state.rng, state.step), 1)
    b, m = hp.batch_size, hp.minibatches
    policy_loss = functools.partial(_policy_loss, cfg, hp)
    value_loss = functools.partial(_value_loss, cfg, hp)

    def minibatch(carry, mb):
        actor, actor_opt, critic, critic_opt = carry
        if train_actor:
            g_actor, stats = _grads(policy_loss, actor, mb, hp.grad_accum)
            actor, actor_opt = _step(tx_actor, actor, actor_opt, g_actor)
            stats["actor_grad_norm"] = optax.global_norm(g_actor)
        else:  # warm-up: the same statistics (ratio 1), no gradient
            stats = dict(policy_loss(actor, mb)[1], actor_grad_norm=jnp.zeros([]))
        # The critic half starts after the actor half: XLA:CPU runs independent collectives
        # concurrently, which can starve the thread pool of many virtual devices on few cores
        # (a hang); each half is a long dependent chain anyway, so little overlap is lost.
        actor, actor_opt, critic = jax.lax.optimization_barrier((actor, actor_opt, critic))
        g_critic, vf_stats = _grads(value_loss, critic, mb, hp.grad_accum)
        critic, critic_opt = _step(tx_critic, critic, critic_opt, g_critic)
        stats.update(vf_stats, critic_grad_norm=optax.global_norm(g_critic))
        return (actor, actor_opt, critic, critic_opt), stats

    def epoch(carry, epoch_key):
        perm = jax.random.permutation(epoch_key, b)
        shuffled = jax.tree.map(lambda x: x[perm].reshape(m, b // m, *x.shape[1:]), batch)
        return jax.lax.scan(minibatch, carry, shuffled)

    carry = (state.params, state.opt_state, state.critic_params, state.critic_opt_state)
    carry, stats = jax.lax.scan(epoch, carry, jax.random.split(key, hp.ppo_epochs))
    actor, actor_opt, critic, critic_opt = carry
    new_state = state.replace(
        step=state.step + 1,
        params=actor,
        opt_state=actor_opt,
        critic_params=critic,
        critic_opt_state=critic_opt,
        kl=rl_math.update_kl_controller(state.kl, kl_mean, hp.batch_size),
    )
    return new_state, jax.tree.map(jnp.mean, stats)


def iteration_key(rng_data, step):
    """Key of iteration `step`: fold_in(base, step). fold_in(·, 0) samples, fold_in(·, 1)
    shuffles; a counter-based scheme, so a resumed run draws exactly the same numbers."""
    return jax.random.fold_in(jax.random.wrap_key_data(rng_data), step)

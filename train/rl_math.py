"""PPO-for-RLHF math as pure functions (no state, no I/O; safe to call inside `jax.jit`).

Shapes: a rollout batch holds B responses of T tokens (response tokens only, right-padded).
`mask_BxT` is 1.0 on real response tokens (the end-of-turn token included) and 0.0 after them;
it must be a prefix mask (ones, then zeros). Every statistic below is taken over mask == 1 only.

Sources cited in the docstrings:
  [Ziegler19]  Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences";
               code: openai/lm-human-preferences (train_policy.py, utils.py).
  [N-details]  Huang et al., "The N Implementation Details of RLHF with PPO" (ICLR blog 2024).
  [N+details]  Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO: TL;DR";
               code: vwxyzjn/lm-human-preference-details, summarize/ppo.py.
  [PPO]        Schulman et al. 2017, "Proximal Policy Optimization Algorithms".
  [GAE]        Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE".
  [Schulman20] J. Schulman, "Approximating KL Divergence" (blog note, 2020).
  [Gao22]      Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization".
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# --------------------------------------------------------------------------------------------
# Log-probs and entropy
# --------------------------------------------------------------------------------------------


def compute_token_logprobs(logits_BxTxV, tokens_BxT, temperature=1.0):
    """log π(token) under the temperature-scaled policy, in fp32.

    logp_t = log_softmax(logits_t / T)[token_t] = z_t[token_t] − logsumexp(z_t), z = logits / T.
    The same T as in sampling must be used in the actor, old-policy and reference passes, or
    the KL to the reference grows far too fast ([N-details] item "temperature"; ppo.md item 1).
    Written as gather − logsumexp so no second B×T×V array (the full log_softmax) is built.
    """
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"train/rl_math.py compute_token_logprobs: temperature={temperature}")
    z_BxTxV = logits_BxTxV.astype(jnp.float32) / temperature
    picked_BxT = jnp.take_along_axis(z_BxTxV, tokens_BxT[..., None], axis=-1)[..., 0]
    return picked_BxT - jax.nn.logsumexp(z_BxTxV, axis=-1)


def compute_entropy(logits_BxTxV, temperature=1.0):
    """Per-token entropy of softmax(logits / T), in fp32.

    H_t = logsumexp(z_t) − Σ_v softmax(z_t)_v · z_t,v  with z = logits / T  ([N+details] code).
    """
    z_BxTxV = logits_BxTxV.astype(jnp.float32) / temperature
    p_BxTxV = jax.nn.softmax(z_BxTxV, axis=-1)
    return jax.nn.logsumexp(z_BxTxV, axis=-1) - jnp.sum(p_BxTxV * z_BxTxV, axis=-1)


# --------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------


def masked_mean(x, mask, axis=None):
    """Σ x·m / Σ m over `axis` (all entries when None). An all-zero mask gives 0, not NaN."""
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def masked_var(x, mask, unbiased=True):
    """Variance over mask == 1: Σ m·(x − μ)² / (n − 1) (unbiased) or / n.

    Unbiased by default as in TRL's `masked_var` and torch.var used by [N+details]; OpenAI's
    TF `whiten` used the biased tf.nn.moments. The two differ by n/(n−1) ≈ 1 for real batches.
    With n ≤ 1 the denominator is clamped to 1, so the variance is 0 rather than NaN.
    """
    mask = mask.astype(x.dtype)
    n = jnp.sum(mask)
    sq = jnp.sum(jnp.square(x - masked_mean(x, mask)) * mask)
    return sq / jnp.maximum(n - 1.0 if unbiased else n, 1.0)


def compute_whiten(x_BxT, mask_BxT, shift_mean=True, eps=1e-8):
    """Masked whitening: (x − μ) / sqrt(σ² + eps), plus μ again when shift_mean is False.

    Advantages are whitened with the mean shift (shift_mean=True); rewards, when whitened, keep
    their mean (shift_mean=False), so the sign of the total reward survives ([Ziegler19]
    utils.whiten, [N-details]; ppo.md item 10). μ, σ² are masked statistics over all B×T real
    tokens (unbiased σ²). Masked-out entries are set to 0 in the output.
    """
    mean = masked_mean(x_BxT, mask_BxT)
    var = masked_var(x_BxT, mask_BxT, unbiased=True)
    out = (x_BxT - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask_BxT.astype(x_BxT.dtype)


# --------------------------------------------------------------------------------------------
# KL estimators and KL-shaped rewards
# --------------------------------------------------------------------------------------------


def compute_kl(logp_BxT, ref_logp_BxT, estimator="k1"):
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled from π ([Schulman20]).

    With log r = ref_logp − logp (r = π_ref(a)/π(a), a ~ π):
      k1 = −log r = logp − ref_logp         unbiased, high variance, can be negative;
      k2 = ½ (log r)²                       biased, low variance, ≥ 0;
      k3 = (r − 1) − log r                  unbiased, low variance, ≥ 0.
    Default k1 as in [Ziegler19]/[N+details] (ppo.md item 7).
    """
    log_r = ref_logp_BxT - logp_BxT
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * jnp.square(log_r)
    if estimator == "k3":
        return jnp.expm1(log_r) - log_r  # expm1: exact near r = 1, where the two terms cancel
    raise ValueError(f"train/rl_math.py compute_kl: estimator={estimator!r}, want k1, k2 or k3")


def last_token_mask(mask_BxT):
    """One-hot (per row) of the last real token of a prefix mask; all zeros for empty rows."""
    next_BxT = jnp.concatenate([mask_BxT[:, 1:], jnp.zeros_like(mask_BxT[:, :1])], axis=1)
    return mask_BxT * (1 - next_BxT)


def apply_eos_penalty(score_B, ended_B, penalty=-1.0):
    """The "EOS trick": a reply that never emitted end-of-turn gets a fixed score, not the RM's.

    score'_b = score_b if ended_b else penalty  ([Ziegler19] penalty_reward_value, [N-details];
    ppo.md item 2, default −1).
    """
    return jnp.where(ended_B.astype(bool), score_B, jnp.asarray(penalty, score_B.dtype))


def compute_rewards(score_B, kl_BxT, mask_BxT, beta, clip=None):
    """Per-token KL-shaped reward and the per-sequence KL that goes to the logs.

    r_t = −β · kl_t · m_t  +  score · [t = last real token]    ([Ziegler19] eq. 2; ppo.md item 7)
    With clip set, the score is clipped to [−clip, clip] first (reward clipping, off by default).
    Returns (rewards_BxT, kl_B) where kl_B = Σ_t kl_t · m_t is computed from the very kl_BxT
    array that shaped the reward, so the logged KL cannot drift from it (trl issue #1161).
    `beta` may be a traced scalar (the KL controller's current value).
    """
    mask_BxT = mask_BxT.astype(kl_BxT.dtype)
    if clip is not None:
        score_B = jnp.clip(score_B, -clip, clip)
    masked_kl_BxT = kl_BxT * mask_BxT
    rewards_BxT = -beta * masked_kl_BxT + score_B[:, None] * last_token_mask(mask_BxT)
    return rewards_BxT, jnp.sum(masked_kl_BxT, axis=1)


# --------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------


def compute_gae(rewards_BxT, values_BxT, mask_BxT, gamma, lam):
    """Generalised Advantage Estimation over the response, by a reverse `lax.scan` ([GAE]).

    δ_t = (r_t + γ · V_{t+1} · m_{t+1} − V_t) · m_t
    A_t = δ_t + γλ · A_{t+1},     A_T = 0
    R_t = (A_t + V_t) · m_t       (the value target)
    The episode ends at the last real token, so the bootstrap value after it is 0 (ppo.md item
    9). Rewards and values at padded positions are multiplied by 0 before use, so whatever the
    critic outputs there cannot leak into real tokens; δ = 0 on the (trailing) padding, hence
    A = 0 and R = 0 there. gamma and lam may be traced scalars.
    """
    dtype = values_BxT.dtype
    mask_BxT = mask_BxT.astype(dtype)
    values_BxT = values_BxT * mask_BxT
    next_values_BxT = jnp.concatenate([values_BxT[:, 1:], jnp.zeros_like(values_BxT[:, :1])], 1)
    delta_BxT = (rewards_BxT + gamma * next_values_BxT - values_BxT) * mask_BxT

    def step(adv_next_B, delta_B):
        adv_B = delta_B + gamma * lam * adv_next_B
        return adv_B, adv_B

    # scan runs over the leading axis, so feed it time-major
    adv0_B = jnp.zeros(rewards_BxT.shape[:1], dtype)
    _, adv_TxB = jax.lax.scan(step, adv0_B, delta_BxT.T, reverse=True)
    advantages_BxT = adv_TxB.T
    return advantages_BxT, advantages_BxT + values_BxT  # both are 0 on padding


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def compute_policy_loss(logp_new_BxT, logp_old_BxT, adv_BxT, mask_BxT, clip_eps=0.2):
    """Clipped surrogate policy loss ([PPO] eq. 7; ppo.md item 11).

    ρ_t = exp(logp_new − logp_old)
    L   = masked_mean( max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)) )
    stats:
      clip_frac  = masked_mean( −A·clip(ρ) > −A·ρ ): tokens where the clipped branch is the
                   larger loss, i.e. the gradient is cut (ρ > 1+ε with A > 0, or ρ < 1−ε with
                   A < 0). Same definition as [N-details]/[N+details] (pg_losses2 > pg_losses).
      approx_kl  = masked_mean( ½ (logp_new − logp_old)² ): the k2 estimate of KL(old ‖ new)
                   that [Ziegler19] and [N+details] log as "approxkl".
      ratio_mean = masked_mean(ρ).
    """
    logratio_BxT = logp_new_BxT - logp_old_BxT
    ratio_BxT = jnp.exp(logratio_BxT)
    loss1_BxT = -adv_BxT * ratio_BxT
    loss2_BxT = -adv_BxT * jnp.clip(ratio_BxT, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(jnp.maximum(loss1_BxT, loss2_BxT), mask_BxT)
    stats = {
        "clip_frac": masked_mean((loss2_BxT > loss1_BxT).astype(jnp.float32), mask_BxT),
        "approx_kl": masked_mean(0.5 * jnp.square(logratio_BxT), mask_BxT),
        "ratio_mean": masked_mean(ratio_BxT, mask_BxT),
    }
    return loss, jax.tree.map(jax.lax.stop_gradient, stats)


def compute_value_loss(v_new_BxT, v_old_BxT, returns_BxT, mask_BxT, clip_eps_v=0.2):
    """Clipped value loss ([N-details] "value function loss clipping"; ppo.md item 11).

    v_clip = v_old + clip(v_new − v_old, −ε_v, ε_v)
    L      = ½ · masked_mean( max((v_new − R)², (v_clip − R)²) )
    clip_eps_v=None turns clipping off: L = ½ · masked_mean((v_new − R)²).
    stats: vf_clip_frac = masked_mean((v_clip − R)² > (v_new − R)²) (0 when unclipped),
           value_error = masked_mean((v_new − R)²), value_mean = masked_mean(v_new).
    """
    err1_BxT = jnp.square(v_new_BxT - returns_BxT)
    if clip_eps_v is None:
        err2_BxT = err1_BxT
    else:
        v_clip_BxT = v_old_BxT + jnp.clip(v_new_BxT - v_old_BxT, -clip_eps_v, clip_eps_v)
        err2_BxT = jnp.square(v_clip_BxT - returns_BxT)
    loss = 0.5 * masked_mean(jnp.maximum(err1_BxT, err2_BxT), mask_BxT)
    stats = {
        "vf_clip_frac": masked_mean((err2_BxT > err1_BxT).astype(jnp.float32), mask_BxT),
        "value_error": masked_mean(err1_BxT, mask_BxT),
        "value_mean": masked_mean(v_new_BxT, mask_BxT),
    }
    return loss, jax.tree.map(jax.lax.stop_gradient, stats)


def compute_explained_variance(values_BxT, returns_BxT, mask_BxT):
    """1 − Var[R − V] / Var[R] over real tokens: 1 = perfect critic, 0 = no better than a
    constant, < 0 = worse. NaN when Var[R] = 0 (undefined), as in Stable-Baselines3."""
    var_r = masked_var(returns_BxT, mask_BxT)
    var_d = masked_var(returns_BxT - values_BxT, mask_BxT)
    return jnp.where(var_r > 0, 1.0 - var_d / jnp.where(var_r > 0, var_r, 1.0), jnp.nan)


# --------------------------------------------------------------------------------------------
# KL coefficient controller (ppo.md item 8)
# --------------------------------------------------------------------------------------------


class KLControllerState(NamedTuple):
    """β and its controller settings, all fp32 scalars, so the pytree checkpoints as is.

    adaptive is 1.0 for the adaptive controller and 0.0 for a fixed β.
    """

    beta: jax.Array
    target: jax.Array
    horizon: jax.Array
    adaptive: jax.Array


def init_kl_controller(beta0, kind="fixed", target=6.0, horizon=10000.0):
    """Initial KL controller state. kind="fixed" keeps β; "adaptive" follows [Ziegler19]."""
    if kind not in ("fixed", "adaptive"):
        raise ValueError(f"train/rl_math.py init_kl_controller: kind={kind!r}, want fixed|adaptive")
    if beta0 < 0:
        raise ValueError(f"train/rl_math.py init_kl_controller: beta0={beta0} must be >= 0")
    if kind == "adaptive" and not (target and target > 0 and horizon and horizon > 0):
        raise ValueError(
            f"train/rl_math.py init_kl_controller: adaptive needs target > 0 and horizon > 0, "
            f"got target={target}, horizon={horizon}"
        )
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    return KLControllerState(
        beta=f32(beta0),
        target=f32(target or 1.0),
        horizon=f32(horizon or 1.0),
        adaptive=f32(kind == "adaptive"),
    )


def update_kl_controller(state, kl_mean, n_steps):
    """One controller step after a rollout batch ([Ziegler19] AdaptiveKLController):

    e = clip(KL / target − 1, −0.2, 0.2);  β ← β · (1 + e · n / horizon)
    KL is the mean per-sequence KL of the batch (kl_B.mean() from `compute_rewards`) and n the
    number of episodes in it (OpenAI passes the batch size). A fixed controller returns β as is.
    """
    err = jnp.clip(kl_mean / state.target - 1.0, -0.2, 0.2)
    mult = 1.0 + err * n_steps / state.horizon
    beta = jnp.where(state.adaptive > 0, state.beta * mult, state.beta)
    return state._replace(beta=beta.astype(jnp.float32))


# --------------------------------------------------------------------------------------------
# Evaluation helpers (host-side numpy)
# --------------------------------------------------------------------------------------------


def bon_kl(n):
    """Analytic KL(best-of-n ‖ base) = log n − (n − 1)/n ([Gao22] §2, after Stiennon et al.)."""
    if n < 1:
        raise ValueError(f"train/rl_math.py bon_kl: n={n} must be >= 1")
    return float(np.log(n) - (n - 1) / n)


def bootstrap_mean_ci(x, n_boot=2000, alpha=0.05, seed=0):
    """Percentile bootstrap CI for the mean of x: returns (mean, lo, hi).

    Resample x with replacement n_boot times; lo, hi = the α/2 and 1 − α/2 quantiles of the
    resampled means (Efron & Tibshirani 1993, ch. 13).
    """
    x = np.asarray(x, np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("train/rl_math.py bootstrap_mean_ci: empty sample")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean()), float(lo), float(hi)


def bootstrap_diff_ci(a, b, n_boot=2000, alpha=0.05, seed=0):
    """Paired bootstrap CI for mean(a − b) (same prompts scored by two policies)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"train/rl_math.py bootstrap_diff_ci: shapes {a.shape} != {b.shape}")
    return bootstrap_mean_ci(a - b, n_boot=n_boot, alpha=alpha, seed=seed)


# --------------------------------------------------------------------------------------------
# TF-style Adam (ppo.md item 14)
# --------------------------------------------------------------------------------------------


class TFAdamState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_tf_adam(b1=0.9, b2=0.999, eps=1e-8):
    """Adam scaling with ε placed as in TensorFlow 1's AdamOptimizer ("epsilon hat").

    m_t = b1·m + (1−b1)·g,  v_t = b2·v + (1−b2)·g²,  c_t = sqrt(1 − b2^t) / (1 − b1^t)
    TF:               u_t = c_t · m_t / (sqrt(v_t) + ε)
    PyTorch / optax:  u_t = m̂_t / (sqrt(v̂_t) + ε) = c_t · m_t / (sqrt(v_t) + ε·sqrt(1 − b2^t))
    So TF's ε is larger by 1/sqrt(1 − b2^t) (≈ 31.6× at t = 1 for b2 = 0.999), which makes
    early updates smaller: more conservative. The two agree once b2^t → 0. OpenAI's
    lm-human-preferences used TF's placement ([N-details] "Adam optimizer epsilon").
    The returned direction is +u; negate and scale with `optax.scale_by_learning_rate`.
    """

    def init_fn(params):
        zeros = lambda p: jnp.zeros_like(p, dtype=jnp.float32)
        return TFAdamState(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params),
                           jax.tree.map(zeros, params))

    def update_fn(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
        t = count.astype(jnp.float32)
        c = jnp.sqrt(1 - b2**t) / (1 - b1**t)
        out = jax.tree.map(lambda m, v, g: (c * m / (jnp.sqrt(v) + eps)).astype(g.dtype),
                           mu, nu, updates)
        return out, TFAdamState(count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def tf_style_adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8):
    """Adam with TF's ε placement (see `scale_by_tf_adam`); a drop-in for `optax.adam`.

    The project default is `optax.adam` (PyTorch placement, as in TRL/[N+details]); this one
    reproduces OpenAI's TF runs. learning_rate may be a float or an optax schedule.
    """
    return optax.chain(scale_by_tf_adam(b1, b2, eps), optax.scale_by_learning_rate(learning_rate))

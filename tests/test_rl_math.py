"""train/rl_math.py against NumPy references and hand computations (tiny arrays, fast)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import rl_math

RTOL, ATOL = 1e-5, 1e-6


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _prefix_mask(lengths, t):
    return (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


# ------------------------------------------------------------------------- log-probs, entropy


def test_token_logprobs_and_entropy_with_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
    tokens = rng.integers(0, 11, size=(2, 5))
    fn = jax.jit(rl_math.compute_token_logprobs)
    ent_fn = jax.jit(rl_math.compute_entropy)
    for temp in (1.0, 0.7, 1.5):
        ref = _np_log_softmax(logits.astype(np.float64) / temp)
        want = np.take_along_axis(ref, tokens[..., None], -1)[..., 0]
        got = fn(jnp.asarray(logits), jnp.asarray(tokens), temp)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-5)
        want_h = -(np.exp(ref) * ref).sum(-1)
        np.testing.assert_allclose(ent_fn(jnp.asarray(logits), temp), want_h, rtol=1e-5, atol=1e-5)
    # bf16 logits are upcast before the softmax, so the result is fp32
    got_bf16 = fn(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(tokens), 1.0)
    assert got_bf16.dtype == jnp.float32
    with pytest.raises(ValueError, match="temperature"):
        rl_math.compute_token_logprobs(jnp.asarray(logits), jnp.asarray(tokens), 0.0)


# ------------------------------------------------------------------------- masked statistics


def test_masked_mean_var_and_whiten():
    rng = np.random.default_rng(1)
    x = rng.normal(loc=3.0, scale=2.0, size=(4, 7)).astype(np.float32)
    mask = _prefix_mask([1, 7, 3, 5], 7)
    x_pad = np.where(mask > 0, x, 1e4).astype(np.float32)  # garbage on padding must not matter
    sel = x[mask > 0].astype(np.float64)
    np.testing.assert_allclose(rl_math.masked_mean(x_pad, mask), sel.mean(), rtol=RTOL)
    np.testing.assert_allclose(rl_math.masked_var(x_pad, mask), sel.var(ddof=1), rtol=1e-5)
    np.testing.assert_allclose(
        rl_math.masked_var(x_pad, mask, unbiased=False), sel.var(ddof=0), rtol=1e-5)
    np.testing.assert_allclose(
        rl_math.masked_mean(x_pad, mask, axis=1), [x[i, : int(mask[i].sum())].mean()
                                                   for i in range(4)], rtol=RTOL)

    whiten = jax.jit(rl_math.compute_whiten, static_argnames="shift_mean")
    w = np.asarray(whiten(jnp.asarray(x_pad), jnp.asarray(mask)))
    ws = w[mask > 0].astype(np.float64)
    assert abs(ws.mean()) < 1e-5 and abs(ws.std(ddof=1) - 1.0) < 1e-4
    assert np.all(w[mask == 0] == 0.0)
    np.testing.assert_allclose(ws, (sel - sel.mean()) / sel.std(ddof=1), rtol=1e-4, atol=1e-5)

    w2 = np.asarray(whiten(jnp.asarray(x_pad), jnp.asarray(mask), shift_mean=False))
    ws2 = w2[mask > 0].astype(np.float64)
    assert abs(ws2.mean() - sel.mean()) < 1e-4, "no-shift whitening must keep the mean"
    assert abs(ws2.std(ddof=1) - 1.0) < 1e-4
    assert np.all(w2[mask == 0] == 0.0)


# ------------------------------------------------------------------------- KL estimators


def test_kl_estimators_on_known_categoricals():
    p = np.array([0.5, 0.2, 0.2, 0.1])
    q = np.array([0.25, 0.25, 0.4, 0.1])
    true_kl = float(np.sum(p * np.log(p / q)))
    a = np.random.default_rng(2).choice(4, size=(200, 500), p=p)  # a ~ π = p
    logp, ref_logp = jnp.log(p)[a], jnp.log(q)[a]
    kl_fn = jax.jit(rl_math.compute_kl, static_argnames="estimator")
    k1 = np.asarray(kl_fn(logp, ref_logp, estimator="k1"), np.float64)
    k3 = np.asarray(kl_fn(logp, ref_logp, estimator="k3"), np.float64)
    k2 = np.asarray(kl_fn(logp, ref_logp, estimator="k2"), np.float64)
    # exact per-token values
    lr = np.log(q)[a] - np.log(p)[a]
    np.testing.assert_allclose(k1, -lr, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k3, np.exp(lr) - 1 - lr, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k2, 0.5 * lr**2, rtol=1e-5, atol=1e-6)
    assert k3.min() >= 0.0 and k1.min() < 0.0  # k3 never negative, k1 can be
    # unbiased in expectation: Monte-Carlo mean within 4 standard errors of the true KL
    for est in (k1, k3):
        se = est.std() / np.sqrt(est.size)
        assert abs(est.mean() - true_kl) < 4 * se + 1e-6, (est.mean(), true_kl, se)
    assert k3.std() < k1.std(), "k3 is the low-variance unbiased estimator"
    with pytest.raises(ValueError, match="estimator"):
        rl_math.compute_kl(logp, ref_logp, "k4")


# ------------------------------------------------------------------------- rewards, EOS penalty


def test_eos_penalty():
    score = np.array([0.3, -2.0, 1.5], np.float32)
    ended = np.array([True, False, True])
    want = np.array([0.3, -1.0, 1.5], np.float32)
    np.testing.assert_array_equal(rl_math.apply_eos_penalty(score, ended, -1.0), want)
    want[1] = -3.0  # float masks (1.0 = ended) work too
    np.testing.assert_array_equal(
        rl_math.apply_eos_penalty(score, ended.astype(np.float32), -3.0), want)


def test_rewards_shape_and_logged_kl_is_reward_kl():
    rng = np.random.default_rng(3)
    lengths = [1, 6, 3]
    mask = _prefix_mask(lengths, 6)
    logp = rng.normal(size=(3, 6)).astype(np.float32)
    ref = rng.normal(size=(3, 6)).astype(np.float32)
    score = np.array([2.0, -0.5, 7.0], np.float32)
    beta = 0.05
    fn = jax.jit(rl_math.compute_rewards, static_argnames="clip")
    for est in ("k1", "k3"):
        kl = rl_math.compute_kl(jnp.asarray(logp), jnp.asarray(ref), est)
        rewards, kl_b = fn(jnp.asarray(score), kl, jnp.asarray(mask), beta)
        rewards, kl_b, kl = map(np.asarray, (rewards, kl_b, kl))
        want = np.zeros((3, 6))
        for i, n in enumerate(lengths):  # hand loop
            for t in range(n):
                want[i, t] = -beta * kl[i, t] + (score[i] if t == n - 1 else 0.0)
        np.testing.assert_allclose(rewards, want, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(kl_b, (kl * mask).sum(1), rtol=RTOL, atol=ATOL)
        # the logged KL is exactly the one that shaped the reward
        np.testing.assert_allclose(rewards.sum(1), score - beta * kl_b, rtol=RTOL, atol=1e-5)
    clipped, _ = fn(jnp.asarray(score), kl, jnp.asarray(mask), beta, clip=5.0)
    np.testing.assert_allclose(np.asarray(clipped)[2, 2] - np.asarray(rewards)[2, 2], 5.0 - 7.0,
                               rtol=RTOL)


# ------------------------------------------------------------------------- GAE


def _np_gae(rewards, values, lengths, gamma, lam):
    adv, ret = np.zeros_like(rewards), np.zeros_like(rewards)
    for i, n in enumerate(lengths):
        last = 0.0
        for t in reversed(range(n)):
            next_v = values[i, t + 1] if t + 1 < n else 0.0
            delta = rewards[i, t] + gamma * next_v - values[i, t]
            last = delta + gamma * lam * last
            adv[i, t] = last
            ret[i, t] = last + values[i, t]
    return adv, ret


def test_gae_matches_numpy_loop():
    t_len = 8
    gae = jax.jit(rl_math.compute_gae)
    rng = np.random.default_rng(4)
    for trial in range(3):
        lengths = np.concatenate([[1, t_len], rng.integers(1, t_len + 1, size=4)])
        mask = _prefix_mask(lengths, t_len)
        rewards = rng.normal(size=(6, t_len))
        values = rng.normal(size=(6, t_len))
        # garbage beyond the mask: must not leak into real tokens
        rewards_in = np.where(mask > 0, rewards, 100.0 * (trial + 1)).astype(np.float32)
        values_in = np.where(mask > 0, values, -50.0 * (trial + 1)).astype(np.float32)
        for gamma, lam in ((1.0, 0.95), (0.99, 0.9), (0.9, 1.0), (1.0, 0.0), (1.0, 1.0)):
            adv, ret = gae(jnp.asarray(rewards_in), jnp.asarray(values_in), jnp.asarray(mask),
                           jnp.float32(gamma), jnp.float32(lam))
            want_adv, want_ret = _np_gae(rewards, values, lengths, gamma, lam)
            np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)
            assert np.all(np.asarray(adv)[mask == 0] == 0.0)
            if gamma == 1.0 and lam == 1.0:  # Monte-Carlo return: reward-to-go
                to_go = np.cumsum((rewards * mask)[:, ::-1], axis=1)[:, ::-1] * mask
                np.testing.assert_allclose(ret, to_go, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- losses


def test_policy_loss_hand_computed_with_clipping_both_sides():
    eps = 0.2
    # token:   in-range   hi & A>0 (clip)  lo & A<0 (clip)  hi & A<0    lo & A>0    padding
    ratio = np.array([[1.1, 1.5, 0.6, 1.5, 0.6, 3.0]])
    adv = np.array([[2.0, 1.0, -1.0, -2.0, 0.5, 9.0]])
    mask = np.array([[1, 1, 1, 1, 1, 0]], np.float32)
    logp_old = np.array([[-1.0, -2.0, -0.5, -3.0, -1.2, -0.1]])
    logp_new = logp_old + np.log(ratio)
    per_token = [-2.0 * 1.1,        # unclipped
                 -1.0 * 1.2,        # clipped at 1+ε: no gain for pushing the ratio higher
                 1.0 * 0.8,         # clipped at 1−ε
                 2.0 * 1.5,         # pessimistic branch is the unclipped one
                 -0.5 * 0.6]
    want_loss = np.mean(per_token)
    want_kl = np.mean(0.5 * np.log(ratio[0, :5]) ** 2)
    args = [jnp.asarray(a, jnp.float32) for a in (logp_new, logp_old, adv, mask)]
    fn = jax.jit(rl_math.compute_policy_loss)
    loss, stats = fn(*args, eps)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(stats["clip_frac"], 2 / 5, rtol=1e-6)
    np.testing.assert_allclose(stats["approx_kl"], want_kl, rtol=1e-5)
    np.testing.assert_allclose(stats["ratio_mean"], ratio[0, :5].mean(), rtol=1e-5)
    # clipped tokens and padding get no gradient; the others get −A·ρ / n
    grad = jax.grad(lambda lp: fn(lp, *args[1:], eps)[0])(args[0])
    want_grad = np.array([-2.0 * 1.1, 0.0, 0.0, 2.0 * 1.5, -0.5 * 0.6, 0.0]) / 5
    np.testing.assert_allclose(grad[0], want_grad, rtol=1e-5, atol=1e-7)


def test_value_loss_hand_computed():
    eps_v = 0.2
    v_old = np.array([[0.0, 0.0, 1.0, 1.0, 0.0, 5.0]])
    v_new = np.array([[1.0, 0.1, 0.5, 1.1, 1.0, -7.0]])
    ret = np.array([[2.0, 1.0, -1.0, 1.0, 0.5, 3.0]])
    mask = np.array([[1, 1, 1, 1, 1, 0]], np.float32)
    # token 0: v_clip = 0.2, (1−2)² = 1 < (0.2−2)² = 3.24 → clipped branch
    # token 1: inside range, both 0.81
    # token 2: v_clip = 0.8, (0.5+1)² = 2.25 < (0.8+1)² = 3.24 → clipped branch
    # token 3: inside range, 0.01
    # token 4: v_clip = 0.2, but (1−0.5)² = 0.25 > (0.2−0.5)² = 0.09 → unclipped branch
    per_token = [3.24, 0.81, 3.24, 0.01, 0.25]
    unclipped = [1.0, 0.81, 2.25, 0.01, 0.25]
    args = [jnp.asarray(a, jnp.float32) for a in (v_new, v_old, ret, mask)]
    fn = jax.jit(rl_math.compute_value_loss, static_argnames="clip_eps_v")
    loss, stats = fn(*args, clip_eps_v=eps_v)
    np.testing.assert_allclose(loss, 0.5 * np.mean(per_token), rtol=1e-5)
    np.testing.assert_allclose(stats["vf_clip_frac"], 2 / 5, rtol=1e-6)
    np.testing.assert_allclose(stats["value_error"], np.mean(unclipped), rtol=1e-5)
    np.testing.assert_allclose(stats["value_mean"], v_new[0, :5].mean(), rtol=1e-5)
    loss_nc, stats_nc = fn(*args, clip_eps_v=None)
    np.testing.assert_allclose(loss_nc, 0.5 * np.mean(unclipped), rtol=1e-5)
    assert float(stats_nc["vf_clip_frac"]) == 0.0


def test_explained_variance():
    rng = np.random.default_rng(5)
    mask = _prefix_mask([2, 5, 4], 5)
    ret = rng.normal(size=(3, 5)).astype(np.float32)
    val = (ret + 0.5 * rng.normal(size=(3, 5))).astype(np.float32)
    val_pad = np.where(mask > 0, val, 99.0).astype(np.float32)
    sel_r, sel_v = ret[mask > 0], val[mask > 0]
    want = 1 - np.var(sel_r - sel_v, ddof=1) / np.var(sel_r, ddof=1)
    np.testing.assert_allclose(rl_math.compute_explained_variance(val_pad, ret, mask), want,
                               rtol=1e-5)
    np.testing.assert_allclose(rl_math.compute_explained_variance(ret, ret, mask), 1.0, rtol=1e-6)
    const = np.full_like(ret, sel_r.mean())
    np.testing.assert_allclose(rl_math.compute_explained_variance(const, ret, mask), 0.0,
                               atol=1e-5)
    assert np.isnan(rl_math.compute_explained_variance(ret, np.ones_like(ret), mask))


# ------------------------------------------------------------------------- KL controller


def test_adaptive_kl_controller_matches_openai_update():
    state = rl_math.init_kl_controller(0.1, "adaptive", target=6.0, horizon=10000)
    assert all(leaf.dtype == jnp.float32 and leaf.shape == () for leaf in jax.tree.leaves(state))
    update = jax.jit(rl_math.update_kl_controller)
    beta = 0.1  # OpenAI's AdaptiveKLController, in Python floats
    kls = [6.0, 9.0, 100.0, 0.0, 5.4, 6.6, 3.0]
    for kl in kls:
        err = min(max(kl / 6.0 - 1, -0.2), 0.2)
        beta *= 1 + err * 512 / 10000
        state = update(state, jnp.float32(kl), 512)
        np.testing.assert_allclose(state.beta, beta, rtol=1e-5)
    # the ±0.2 clip: a huge or zero KL moves β by exactly ±0.2·n/horizon
    s0 = rl_math.init_kl_controller(1.0, "adaptive", target=6.0, horizon=100)
    np.testing.assert_allclose(update(s0, 1e6, 10).beta, 1.0 + 0.2 * 10 / 100, rtol=1e-6)
    np.testing.assert_allclose(update(s0, 0.0, 10).beta, 1.0 - 0.2 * 10 / 100, rtol=1e-6)
    np.testing.assert_allclose(update(s0, 6.6, 10).beta, 1.0 + 0.1 * 10 / 100, rtol=1e-6)
    fixed = rl_math.init_kl_controller(0.05, "fixed")
    for kl in kls:
        fixed = update(fixed, jnp.float32(kl), 512)
    assert float(fixed.beta) == float(np.float32(0.05)), "a fixed β never moves"
    with pytest.raises(ValueError, match="kind"):
        rl_math.init_kl_controller(0.1, "pid")
    with pytest.raises(ValueError, match="target"):
        rl_math.init_kl_controller(0.1, "adaptive", target=0.0)


# ------------------------------------------------------------------------- eval helpers


def test_bon_kl_matches_numeric_integral():
    # best-of-n of a continuous reward has density n·u^(n−1) in u = F(reward), so
    # KL = ∫₀¹ n u^(n−1) log(n u^(n−1)) du; midpoint rule on a fine grid
    u = (np.arange(200000) + 0.5) / 200000
    for n in (1, 2, 4, 16, 64):
        log_dens = np.log(n) + (n - 1) * np.log(u)  # log form: u**63 underflows
        numeric = np.mean(np.exp(log_dens) * log_dens)
        np.testing.assert_allclose(rl_math.bon_kl(n), numeric, rtol=1e-3, atol=1e-6)
    assert rl_math.bon_kl(1) == 0.0
    with pytest.raises(ValueError):
        rl_math.bon_kl(0)


def test_bootstrap_intervals():
    rng = np.random.default_rng(6)
    covered = 0
    for seed in range(40):
        x = rng.normal(1.0, 2.0, size=60)
        m, lo, hi = rl_math.bootstrap_mean_ci(x, n_boot=1000, seed=seed)
        assert lo < m < hi and m == pytest.approx(x.mean())
        covered += lo <= 1.0 <= hi
        # close to the normal-theory interval mean ± 1.96·s/√n (not just wide enough)
        half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
        assert abs((m - lo) - half) < 0.2 * half and abs((hi - m) - half) < 0.2 * half
    assert covered >= 32, f"95% interval covered the true mean only {covered}/40 times"
    # paired difference: big per-prompt spread, small consistent gain → CI above 0
    base = rng.normal(0.0, 5.0, size=80)
    a = base + 0.3 + rng.normal(0.0, 0.1, size=80)
    d, lo, hi = rl_math.bootstrap_diff_ci(a, base)
    assert 0.0 < lo < d < hi and abs(d - 0.3) < 0.05
    _, lo0, hi0 = rl_math.bootstrap_diff_ci(base, base + rng.normal(0, 0.1, size=80))
    assert lo0 < 0.0 < hi0
    with pytest.raises(ValueError, match="shapes"):
        rl_math.bootstrap_diff_ci(a, base[:10])


# ------------------------------------------------------------------------- TF-style Adam


def _np_tf_adam(grads, lr, b1, b2, eps):
    m = v = np.zeros_like(grads[0])
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        out.append(-lr_t * m / (np.sqrt(v) + eps))
    return out


def _run(opt, grads):
    params = {"w": jnp.zeros(grads[0].shape, jnp.float32)}
    state, out = opt.init(params), []
    step = jax.jit(opt.update)
    for g in grads:
        upd, state = step({"w": jnp.asarray(g, jnp.float32)}, state, params)
        out.append(np.asarray(upd["w"]))
    return out


def test_tf_style_adam():
    rng = np.random.default_rng(7)
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-5
    grads = [rng.normal(scale=1e-4, size=(5,)) for _ in range(5)]
    tf_upd = _run(rl_math.tf_style_adam(lr, b1, b2, eps), grads)
    for got, want in zip(tf_upd, _np_tf_adam(grads, lr, b1, b2, eps), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)
    # early on TF's ε is 1/sqrt(1 − b2^t) times larger → same direction, smaller steps
    pt_upd = _run(optax.adam(lr, b1, b2, eps), grads)
    for tf_u, pt_u in zip(tf_upd, pt_upd, strict=True):
        assert np.all(np.sign(tf_u) == np.sign(pt_u))
        assert np.all(np.abs(tf_u) < 0.9 * np.abs(pt_u))
    # once b2^t ≈ 0 the two placements agree
    many = [rng.normal(scale=1e-4, size=(5,)) for _ in range(200)]
    tf_late = _run(rl_math.tf_style_adam(lr, b1, 0.9, eps), many)[-1]
    pt_late = _run(optax.adam(lr, b1, 0.9, eps), many)[-1]
    np.testing.assert_allclose(tf_late, pt_late, rtol=1e-4, atol=1e-9)

"""One PPO iteration split into rollout / score (+ advantages) / update, timed.

Uses the real compiled phases (make_phases of train/ppo_setup.py) with the PPO hyper-parameters of
configs/ppo/tiny.py (epochs, minibatches, KL, clipping ...) on random actor, critic, reference
and reward-model parameters of a named size, and random prompts. Rollouts sample with the
configured temperature and stop at <|end|> (id 7), so the rollout time depends on how soon the
random policy emits it — with random weights rows almost always run to max_new_tokens, which
is the worst case (the KL and rewards are meaningless; only the time is measured).
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from scripts import bench_jax as bj

END_ID, PAD_ID = 7, 0  # the shared tokenizer layout (pad=0, <|end|>=7)


def _ppo_api():
    """(hparams_from_config, make_phases, RewardModelScore) wherever the PPO stage keeps them.

    Imported from the phase modules, not train/ppo.py, which imports grain (not on the GPU
    image).
    """
    from train import ppo_phases

    try:
        from train import ppo_setup as builders
    except ModuleNotFoundError:
        builders = ppo_phases
    return builders.hparams_from_config, builders.make_phases, ppo_phases.RewardModelScore


def _phases(cfg, batch, prompt_len, new_tokens):
    from configs.ppo import tiny as ppo_tiny
    from train import rl_math

    hparams_from_config, make_phases, reward_model_score = _ppo_api()
    config = ppo_tiny.get_config()
    config.rollout.batch_size = batch
    config.rollout.max_new_tokens = new_tokens
    hp = hparams_from_config(config, prompt_len, END_ID, PAD_ID)
    setup, actor, _ = bj.init_params(cfg, bj.make_mesh(), seed=0)
    critic, _ = setup.init_params(1, head="scalar")
    reward_params, _ = setup.init_params(2, head="scalar")
    p = config.ppo
    phases = make_phases(
        setup,
        hp,
        dict(config.optim),
        dict(config.critic_optim),
        p.iterations * p.epochs * p.minibatches,
        reward_model_score(cfg),
    )
    reference = jax.tree.map(jnp.copy, actor)
    reward = {"params": reward_params, "gain": jnp.float32(1.0), "bias": jnp.float32(0.0)}
    kl0 = rl_math.init_kl_controller(
        config.kl.coef, config.kl.controller, config.kl.target, config.kl.horizon
    )
    state = phases.init_state(actor, critic, kl0, 0)
    return config, phases, state, reference, reward


def _iteration(phases, state, reference, reward, prompt, key):
    """(state, seconds per phase, mean response length) of one iteration, each phase blocked."""
    times, t = {}, time.perf_counter()
    gen = jax.block_until_ready(phases.rollout(state.params, prompt, key))
    times["rollout"], t = time.perf_counter() - t, time.perf_counter()
    batch, _ = phases.score(state.params, reference, state.critic_params, reward, prompt, gen)
    batch, adv = jax.block_until_ready(phases.advantages(batch, state.kl.beta))
    times["score"], t = time.perf_counter() - t, time.perf_counter()
    state, stats = phases.update(state, batch, adv["kl"], train_actor=True)
    jax.block_until_ready((state, stats))
    times["update"] = time.perf_counter() - t
    return state, times, float(np.mean(np.asarray(gen.lengths_B)))


def bench_ppo(size, batch, prompt_len, new_tokens, *, dtype="float32", repeats=3) -> dict:
    """Median seconds of rollout / score+advantages / update over `repeats` iterations.

    The first iteration compiles every phase and is reported as compile time (its total
    minus the median iteration).
    """
    base = bj.model_config(size)
    cfg = bj.model_config(
        size, compute_dtype=dtype, max_seq_len=max(prompt_len + new_tokens, base.max_seq_len)
    )
    config, phases, state, reference, reward = _phases(cfg, batch, prompt_len, new_tokens)
    prompt = bj.random_prompts(batch, prompt_len, cfg.vocab_size, seed=0)
    start = time.perf_counter()
    state, _, _ = _iteration(phases, state, reference, reward, prompt, jax.random.key(0))
    first_s = time.perf_counter() - start
    per_phase, lengths = {"rollout": [], "score": [], "update": []}, []
    for i in range(repeats):
        state, times, length = _iteration(
            phases, state, reference, reward, prompt, jax.random.key(i + 1)
        )
        lengths.append(length)
        for k, v in times.items():
            per_phase[k].append(v)
    med = {k: statistics.median(v) for k, v in per_phase.items()}
    total = sum(med.values())
    p = config.ppo
    result = dict(
        kind="ppo",
        size=size,
        params=cfg.param_count(),
        batch=batch,
        prompt_len=prompt_len,
        new_tokens=new_tokens,
        dtype=dtype,
        repeats=repeats,
        epochs=p.epochs,
        minibatches=p.minibatches,
        **bj.device_summary(),
        phase_s=med,
        phase_s_all=per_phase,
        iteration_s=total,
        compile_s=first_s - total,
        mean_response_len=statistics.mean(lengths),
        summary=", ".join(f"{k} {v:.2f} s ({v / total:.0%})" for k, v in med.items()),
    )
    _print(result)
    return result


def _print(res):
    from scripts.bench_print import print_table

    rows = [
        ("model", f"{res['size']}: {res['params'] / 1e6:.2f}M params (x4 roles), {res['dtype']}"),
        (
            "batch x prompt x new",
            f"{res['batch']} x {res['prompt_len']} x "
            f"{res['new_tokens']} (mean reply {res['mean_response_len']:.1f})",
        ),
        ("update", f"{res['epochs']} epochs x {res['minibatches']} minibatches"),
        ("device", f"{res['device_kind']} x{res['devices']} ({res['platform']})"),
    ]
    rows += [
        (f"{k}", f"{v:.3f} s ({v / res['iteration_s']:.0%})") for k, v in res["phase_s"].items()
    ]
    rows += [
        (
            "iteration",
            f"{res['iteration_s']:.3f} s (compile, first iteration: +{res['compile_s']:.1f} s)",
        )
    ]
    print_table(f"PPO iteration (median of {res['repeats']})", rows)

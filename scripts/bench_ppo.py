"""One PPO iteration split into rollout / score (+ advantages) / update, timed.

Uses the real compiled phases (make_phases of train/ppo_setup.py) with the PPO hyper-parameters of
configs/ppo/tiny.py (epochs, minibatches, KL, clipping ...) on random actor, critic, reference
and reward-model parameters of a named size, and random prompts. Rollouts sample with the
configured temperature and stop at <|end|> (id 7), so the rollout time depends on how soon the
random policy emits it — with random weights rows almost always run to max_new_tokens, which
is the worst case (the KL and rewards are meaningless; only the time is measured). stop=False
gives the sampler no stop ids: every row runs to max_new_tokens. `settings` and
`jax_ppo_runner` are shared with the TRL comparison (scripts/bench.py ppo --trl).
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


def settings(size, batch, prompt_len, new_tokens, dtype="float32"):
    """(model config, configs/ppo/tiny.py's config at this batch and reply length, prompts):
    what both jaxchat and the TRL baseline (scripts/bench_trl.py) run on."""
    from configs.ppo import tiny as ppo_tiny

    base = bj.model_config(size)
    cfg = bj.model_config(
        size, compute_dtype=dtype, max_seq_len=max(prompt_len + new_tokens, base.max_seq_len)
    )
    config = ppo_tiny.get_config()
    config.rollout.batch_size = batch
    config.rollout.max_new_tokens = new_tokens
    prompt = bj.random_prompts(batch, prompt_len, cfg.vocab_size, seed=0)
    return cfg, config, prompt


def _phases(cfg, config, prompt_len, stop):
    from train import rl_math

    hparams_from_config, make_phases, reward_model_score = _ppo_api()
    # no stop ids: every row samples max_new_tokens (the sampler's stop set is empty)
    hp = hparams_from_config(config, prompt_len, END_ID if stop else (), PAD_ID)
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
    return phases, state, reference, reward


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


def jax_ppo_runner(cfg, config, prompt, *, stop=True):
    """run() does one jaxchat PPO iteration and returns (seconds per phase, mean reply
    length); the first call compiles every phase. The state is donated, so run carries it."""
    prompt_len = np.asarray(prompt[0]).shape[1]
    phases, state, reference, reward = _phases(cfg, config, prompt_len, stop)
    holder = {"state": state, "i": 0}

    def run():
        key = jax.random.key(holder["i"])
        holder["state"], times, length = _iteration(
            phases, holder["state"], reference, reward, prompt, key
        )
        holder["i"] += 1
        return times, length

    return run


def bench_ppo(
    size, batch, prompt_len, new_tokens, *, dtype="float32", repeats=3, stop=True
) -> dict:
    """Median seconds of rollout / score+advantages / update over `repeats` iterations.

    The first iteration compiles every phase and is reported as compile time (its total
    minus the median iteration). stop=False: no stop token, every reply runs to new_tokens.
    """
    cfg, config, prompt = settings(size, batch, prompt_len, new_tokens, dtype)
    run = jax_ppo_runner(cfg, config, prompt, stop=stop)
    start = time.perf_counter()
    run()
    first_s = time.perf_counter() - start
    per_phase, lengths = {"rollout": [], "score": [], "update": []}, []
    for _ in range(repeats):
        times, length = run()
        lengths.append(length)
        for k, v in times.items():
            per_phase[k].append(v)
    med = {k: statistics.median(v) for k, v in per_phase.items()}
    total = sum(med.values())
    result = dict(
        **describe(size, cfg, config, prompt_len, dtype, repeats, stop),
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


def describe(size, cfg, config, prompt_len, dtype, repeats, stop) -> dict:
    """The settings a PPO result records (alone or against TRL)."""
    p, r = config.ppo, config.rollout
    return dict(
        kind="ppo",
        size=size,
        params=cfg.param_count(),
        batch=r.batch_size,
        prompt_len=prompt_len,
        new_tokens=r.max_new_tokens,
        dtype=dtype,
        repeats=repeats,
        epochs=p.epochs,
        minibatches=p.minibatches,
        stop=stop,
    )


def _print(res):
    from scripts.bench_print import print_table

    rows = [
        ("model", f"{res['size']}: {res['params'] / 1e6:.2f}M params (x4 roles), {res['dtype']}"),
        (
            "batch x prompt x new",
            f"{res['batch']} x {res['prompt_len']} x "
            f"{res['new_tokens']} (mean reply {res['mean_response_len']:.1f}"
            f"{'' if res['stop'] else ', no stop'})",
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


def print_vs_trl(res):
    """The table of scripts.bench ppo --trl: both sides per phase, and TRL s / jaxchat s."""
    from scripts.bench_print import malloc_rows, print_table

    jax_fw, trl_fw = res["frameworks"]["jaxchat"], res["frameworks"]["trl"]
    ratio = res["trl_over_jaxchat"]

    def row(name, key):
        jax_s, trl_s = jax_fw["phase_s"].get(key), trl_fw["phase_s"][key]
        if jax_s is None:
            return name, f"jaxchat -        | TRL {trl_s:7.3f} s"
        return name, f"jaxchat {jax_s:7.3f} s | TRL {trl_s:7.3f} s | TRL/jaxchat {ratio[key]:.2f}x"

    rows = [
        ("model", f"{res['size']}: {res['params'] / 1e6:.2f}M params (x4 roles), {res['dtype']}"),
        (
            "batch x prompt x new",
            f"{res['batch']} x {res['prompt_len']} x {res['new_tokens']} (mean reply jaxchat "
            f"{jax_fw['mean_response_len']:.1f}, TRL {trl_fw['mean_response_len']:.1f}"
            f"{'' if res['stop'] else ', no stop'})",
        ),
        ("update", f"{res['epochs']} epochs x {res['minibatches']} minibatches"),
        ("device", f"{res['device_kind']} x{res['devices']} ({res['platform']})"),
        (
            "threads",
            f"torch {res['torch_threads']} (OMP_WAIT_POLICY={res['omp_wait_policy']}), "
            f"XLA: all {res['host_cpus']} cores; load {res['load_avg_1min']:.1f}",
        ),
        row("rollout", "rollout"),
        row("score + advantages", "score"),
        row("update", "update"),
        row("rollout + score + update", "phases"),
        row("other (TRL: data, metrics, gc)", "other"),
        ("TRL gc.collect()", f"{trl_fw['phase_s']['gc']:.3f} s (of score + other)"),
        (
            "iteration",
            f"jaxchat {jax_fw['iteration_s']:7.3f} s | TRL {trl_fw['iteration_s']:7.3f} s | "
            f"TRL/jaxchat {ratio['iteration']:.2f}x",
        ),
        (
            "first iteration",
            f"jaxchat {jax_fw['first_iteration_s']:.1f} s (compiles) | TRL "
            f"{trl_fw['first_iteration_s']:.1f} s",
        ),
        ("setup", f"jaxchat {jax_fw['setup_s']:.1f} s | TRL {trl_fw['setup_s']:.1f} s"),
    ]
    rows += malloc_rows(res)
    print_table(f"PPO iteration vs TRL (medians of {res['repeats']} alternating rounds)", rows)

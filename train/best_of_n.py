"""Best-of-n against the reward model: the other way to optimise a policy for a reward, the
baseline PPO is compared with (Stiennon et al. 2020; Nakano et al. 2021; Gao et al. 2022).

    rows = run_best_of_n(setup, tok, sft_params, rm_params, gain, bias, world, prompts,
                         [1, 2, 4, 8, 16])
    # [{"n", "kl", "gold_mean", "gold_ci", "rm_mean"}, ...] (gold: worlds with a gold scorer)

For every prompt, N = max(ns) replies are sampled from the SFT policy at the given temperature
and scored with the normalised reward model (gain · RM + bias at the last reply token; a reply
that never ends gets the EOS penalty instead, exactly as PPO's reward). For each n ≤ N the
expected gold and reward of the reply the reward model ranks best among n drawn at random
(without replacement) from the N is computed exactly: with the N replies sorted by reward
(ties: sample order), the i-th lowest (i = 1..N) is the best of a random n-subset iff it is in
the subset and the other n−1 come from the i−1 below it, so

    E[g(best of n)] = Σ_i g_(i) · C(i−1, n−1) / C(N, n)

(the unbiased estimator of Nakano et al. 2021, app. F, which Gao et al. 2022 use too). It uses
all N samples for every n. KL(best-of-n ‖ SFT) = log n − (n−1)/n (rl_math.bon_kl, analytic).
Intervals: percentile bootstrap over prompts.
"""

import functools
import math

import jax
import numpy as np

from data import chat
from model import sampler, sharding
from train import rl_math
from train.distributed import to_host
from train.ppo_phases import RewardModelScore, assemble


def bon_weights(n_samples: int, n: int) -> np.ndarray:
    """w_i = C(i−1, n−1) / C(N, n), i = 1..N: P(the i-th lowest of N is the best of n)."""
    if not 1 <= n <= n_samples:
        raise ValueError(f"train/best_of_n.py: n={n} must be in [1, N={n_samples}]")
    total = math.comb(n_samples, n)
    return np.array([math.comb(i - 1, n - 1) / total for i in range(1, n_samples + 1)])


def best_of_n_expectation(values_PxN, rewards_PxN, n: int) -> np.ndarray:
    """Per prompt, E[value of the reward-best of n of the N samples] (see module docstring)."""
    order = np.argsort(rewards_PxN, axis=1, kind="stable")
    return np.take_along_axis(np.asarray(values_PxN, np.float64), order, 1) @ bon_weights(
        rewards_PxN.shape[1], n
    )


@functools.lru_cache(maxsize=4)
def _reward_scorer(cfg, pad_id, mesh, rules):
    fn = jax.jit(lambda rs, prompt, gen: RewardModelScore(cfg)(rs, assemble(*prompt, gen, pad_id)))

    def score(reward_state, prompt, gen):
        with sharding.activate(mesh, rules):
            return fn(reward_state, prompt, gen)

    return score


def sample_and_score(
    setup,
    tok,
    sft_params,
    reward_state,
    prompts,
    n_samples,
    *,
    temperature,
    max_new_tokens,
    batch_size,
    seed,
    eos_penalty,
    prompt_len,
):
    """(gold-ready texts, terminated, reward) of n_samples replies per prompt, row-major."""
    generate = sampler.make_generate(
        setup.model_cfg,
        max_new_tokens,
        temperature=temperature,
        stop_ids=chat.stop_ids(tok),
        pad_id=tok.pad_id,
        mesh=setup.mesh,
        rules=setup.rules,
    )
    score = _reward_scorer(setup.model_cfg, tok.pad_id, setup.mesh, tuple(setup.rules))
    rows = [p for p in prompts for _ in range(n_samples)]
    key, texts, terminated, rewards = jax.random.key(seed), [], [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompt = sampler.left_pad(
            chunk + [chunk[-1]] * (batch_size - len(chunk)), tok.pad_id, prompt_len
        )
        gen = generate(sft_params, *prompt, jax.random.fold_in(key, start))
        rm = to_host(score(reward_state, prompt, gen))[: len(chunk)]
        gen = to_host(gen)
        ended = np.asarray(gen.ended_B)[: len(chunk)]
        rewards.append(rm if eos_penalty is None else np.where(ended, rm, eos_penalty))
        lengths = np.asarray(gen.lengths_B)[: len(chunk)]
        for row, n in zip(np.asarray(gen.tokens_BxT)[: len(chunk)], lengths):
            reply = chat.parse_reply(tok, row[:n])
            texts.append(reply.text)
            terminated.append(reply.terminated)
    return texts, np.array(terminated), np.concatenate(rewards).astype(np.float64)


def run_best_of_n(
    setup,
    tok,
    sft_params,
    reward_params,
    gain,
    bias,
    world,
    prompts,
    ns,
    *,
    temperature=0.7,
    max_new_tokens=32,
    batch_size=64,
    seed=0,
    eos_penalty=-1.0,
    prompt_len=None,
) -> list[dict]:
    """[{n, kl, gold_mean, gold_ci: [lo, hi], rm_mean}] for each n in ns, on `prompts`
    (data.worlds.Prompt) of `world`; without a gold scorer the rows hold n, kl and rm_mean."""
    ns = sorted({int(n) for n in ns})
    if not prompts or not ns or ns[0] < 1:
        raise ValueError(f"train/best_of_n.py: need prompts and n values >= 1, got "
                         f"{len(prompts)} prompts and ns={ns}")
    rendered = [chat.render_prompt(tok, p.messages) for p in prompts]
    mult = setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]
    batch_size = -(-batch_size // mult) * mult
    prompt_len = prompt_len or -(-max(map(len, rendered)) // 8) * 8
    reward_state = {"params": reward_params, "gain": np.float32(gain), "bias": np.float32(bias)}
    texts, terminated, rewards = sample_and_score(
        setup,
        tok,
        sft_params,
        reward_state,
        rendered,
        ns[-1],
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        eos_penalty=eos_penalty,
        prompt_len=prompt_len,
    )
    repeated = [p for p in prompts for _ in range(ns[-1])]
    gold = world.gold(repeated, texts, terminated)
    rewards = rewards.reshape(len(prompts), ns[-1])
    out = []
    for n in ns:
        row = {"n": n, "kl": rl_math.bon_kl(n),
               "rm_mean": float(best_of_n_expectation(rewards, rewards, n).mean())}
        if gold is not None:
            values = best_of_n_expectation(gold.reshape(rewards.shape), rewards, n)
            mean, lo, hi = rl_math.bootstrap_mean_ci(values)
            row.update(gold_mean=mean, gold_ci=[lo, hi])
        out.append(row)
    return out


def print_table(rows: list[dict]) -> None:
    print("best-of-n vs the reward model (SFT samples): n | KL (nats) | gold [95% CI] | RM")
    for r in rows:
        gold = f"{r['gold_mean']:.3f} [{r['gold_ci'][0]:.3f}, {r['gold_ci'][1]:.3f}]" \
            if "gold_mean" in r else "—"
        print(f"  {r['n']:>3} | {r['kl']:.3f} | {gold} | {r['rm_mean']:+.2f}")

"""Stage 4 — PPO (RLHF): optimise the SFT policy against the reward model, KL-penalised.

    python -m scripts.train --config configs/ppo/tiny.py --workdir runs/ppo_tiny

Reads top to bottom: roles (actor and reference from the SFT run, critic and reward from the
reward run) → prompts of the stage's world (data/worlds.py: `prompts` for rollouts, `eval` for
held-out evaluation; the synthetic tasks or the user's prompt files) → compiled phases
(train/ppo_setup.py) → iterations → summary.json (train/ppo_eval.py: SFT vs PPO on held-out
prompts — gold where the world has a gold scorer, the reward model's win rate, RM score, KL —
best-of-n, intermediate policies) and the headline.

One iteration = rollout (sample B train prompts at temperature T) → score (old and reference
log-probs, values, reward at the last token, EOS penalty) → advantages (KL-shaped rewards,
GAE, whitening) → update (K epochs × minibatches × microbatches) → KL controller step.
ppo.md's checklist is implemented item by item; configs/ppo/tiny.py has a switch for each.

Roles: the actor (policy) and the critic are trained and live in the PPOState with their
optimizer states; the reference (SFT params) and the reward (reward-model params + gain/bias)
are plain frozen param trees passed to the score phase only: they never reach an optimizer.

Exact resume: the PPOState (actor, critic, both optimizer states, KL controller, RNG, iteration)
goes into one orbax checkpoint with the prompt stream's position (JSON) and the run log
(health baselines, evaluation points, timings) every train.ckpt_every iterations, at the end
and on SIGTERM/SIGINT. Randomness is counter-based (fold_in(key, iteration)), so a resumed run
continues bit for bit.
"""

import dataclasses
import math
import os
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
from tqdm import tqdm

from data import chat, worlds
from data.tokenizer import Tokenizer, check_vocab, load_tokenizer
from model import sampler
from train import compile_cache, optim, ppo_eval, rl_math
from train import setup as setup_lib
from train.checkpoint import Checkpoints, abstract_like, load_params
from train.distributed import to_host
from train.loop import NonFiniteLoss, _stop_on_signals, close_all, save_finite
from train.metrics import MetricsWriter, write_run_info
from train.ppo_eval import replies
from train.ppo_phases import RewardModelScore, iteration_key
from train.ppo_setup import hparams_from_config, make_phases
from train.reward import load_reward_model


@dataclasses.dataclass
class Roles:
    reference: Any  # frozen SFT params
    reward: dict  # frozen {"params": reward-model params, "gain": f32, "bias": f32}
    actor: Any = None  # SFT params, handed to the PPOState (then dropped here)
    critic: Any = None  # reward-model params, handed to the PPOState


@dataclasses.dataclass
class Prompts:
    world: Any  # data.worlds: the synthetic tasks or the user's prompt files
    train: list  # [data.worlds.Prompt] rollout prompts
    train_ids: list  # rendered prompt ids
    heldout: list  # evaluation prompts (never sampled for rollouts)
    heldout_ids: list
    prompt_len: int  # P: every prompt is left-padded to it (one compile)


@dataclasses.dataclass
class Run:
    """What the loop, the evaluation and the summary read; built once by run()."""

    config: Any
    workdir: str
    setup: Any
    tok: Tokenizer
    prompts: Prompts
    hp: Any  # train.ppo_setup.Hparams
    phases: Any  # train.ppo_setup.Phases
    roles: Roles
    lr_schedule: Any  # the actor's learning rate by optimizer step (for the logs)


@dataclasses.dataclass
class PPOResult:
    state: Any  # train.ppo_phases.PPOState
    iteration: int
    interrupted: bool
    summary: dict | None
    last_batch: dict | None  # host copy of the last iteration's arrays (tests, debugging)
    last_metrics: dict
    roles: Roles | None = None  # the frozen reference and reward, for further evaluation


def run(config, workdir: str, reward_fn=None, stop_after: int | None = None) -> PPOResult:
    """Trains config.ppo.iterations iterations (resuming from workdir/ckpt if present).

    reward_fn: (reward_state, batch) -> score_B replacing the reward model's normalised score
    (tests pass a toy reward). stop_after: stop (with a checkpoint) after that iteration, as
    SIGTERM would.
    """
    t0 = time.perf_counter()
    tok = load_tokenizer(config.data.tokenizer)
    check_vocab(tok, config.model.vocab_size)
    setup = setup_lib.make_setup(config)
    roles, words = load_roles(config, setup)
    prompts = make_prompts(config, tok, words)
    hp = hparams_from_config(config, prompts.prompt_len, chat.stop_ids(tok), tok.pad_id)
    steps = config.ppo.iterations * config.ppo.epochs * config.ppo.minibatches
    reward_fn = reward_fn or RewardModelScore(setup.model_cfg)
    phases = make_phases(setup, hp, config.optim, config.critic_optim, steps, reward_fn)
    k = config.kl
    kl0 = rl_math.init_kl_controller(k.coef, k.controller, k.target, k.horizon)
    state = phases.init_state(roles.actor, roles.critic, kl0, config.seed)
    roles.actor = roles.critic = None  # the state owns (and donates) them from here on
    r = Run(
        config,
        workdir,
        setup,
        tok,
        prompts,
        hp,
        phases,
        roles,
        optim.make_schedule(config.optim, steps),
    )
    result, extras, last_eval = train(r, state, stop_after)
    result.roles = roles
    if not result.interrupted and prompts.heldout:
        result.summary = ppo_eval.finish(r, result, extras, last_eval, time.perf_counter() - t0)
    return result


# ------------------------------------------------------------------------------ inputs


def load_roles(config, setup) -> tuple[Roles, list | None]:
    """The four roles, each its own sharded buffers, plus the SFT run's task words."""
    ckpt_dir = os.path.join(config.sft_from, "ckpt")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(
            f"config sft_from={config.sft_from!r}: no {ckpt_dir}; train the SFT stage first"
        )
    shardings, abstract = setup.param_shardings("lm")
    target = abstract_like(abstract, shardings)
    actor, sft_extras = load_params(ckpt_dir, target)
    reference, _ = load_params(ckpt_dir, target)  # not an alias: the actor gets donated
    critic, _ = load_reward_model(config.reward_from, setup)
    rm_params, norm = load_reward_model(config.reward_from, setup)
    reward = {"params": rm_params, "gain": jnp.float32(norm.gain), "bias": jnp.float32(norm.bias)}
    return Roles(reference, reward, actor, critic), (sft_extras.get("task_words") or None)


def make_prompts(config, tok, words) -> Prompts:
    """Rollout prompts (config.prompts) and held-out ones (config.eval) of the stage's world,
    rendered; the synthetic tasks use the SFT run's task words, so PPO sees the prompt
    distribution SFT was trained on."""
    world = worlds.make_world({"train": config.prompts, "heldout": config.eval}, words,
                              "config.prompts / config.eval")
    train, held = world.prompts("train"), world.prompts("heldout")
    if not train:
        raise ValueError("config.prompts.source is empty: PPO needs rollout prompts")
    limit, new = config.model.max_seq_len, config.rollout.max_new_tokens
    render = lambda ps: worlds.render_prompts(tok, ps, new, limit, "rollout")
    train_ids, held_ids = render(train), render(held)
    width = -(-max(map(len, train_ids + held_ids)) // 8) * 8
    if width + new > limit:  # every prompt fits, but not padded to a multiple of 8
        width = max(map(len, train_ids + held_ids))
    return Prompts(world, train, train_ids, held, held_ids, width)


class PromptStream:
    """Train prompt indices in a seeded order, reshuffled every epoch (grain's shuffle folds
    the epoch into the seed), read at an explicit position, which is the whole state."""

    def __init__(self, n: int, seed: int):
        self._ds = grain.MapDataset.range(n).shuffle(seed=seed).repeat()
        self.position = 0

    def next(self, k: int) -> list[int]:
        out = [int(self._ds[i]) for i in range(self.position, self.position + k)]
        self.position += k
        return out

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])


# ------------------------------------------------------------------------------ one iteration


def iteration(r: Run, state, indices):
    """rollout → score → advantages → update; returns (state, host batch, metrics)."""
    times, t, hp, step = {}, time.perf_counter(), r.hp, int(state.step)
    prompt_ids = [r.prompts.train_ids[i] for i in indices]
    prompt = sampler.left_pad(prompt_ids, hp.pad_id, hp.prompt_len)
    key = jax.random.fold_in(iteration_key(state.rng, step), 0)
    gen = jax.block_until_ready(r.phases.rollout(state.params, prompt, key))
    times["time_rollout"], t = time.perf_counter() - t, time.perf_counter()
    batch, score_stats = r.phases.score(
        state.params, r.roles.reference, state.critic_params, r.roles.reward, prompt, gen
    )
    beta = float(state.kl.beta)
    batch, adv_stats = jax.block_until_ready(r.phases.advantages(batch, state.kl.beta))
    times["time_score"], t = time.perf_counter() - t, time.perf_counter()
    warmup = step < r.config.ppo.critic_warmup
    state, upd_stats = r.phases.update(state, batch, adv_stats["kl"], train_actor=not warmup)
    upd_stats = to_host(upd_stats)
    times["time_update"] = time.perf_counter() - t
    host = to_host(batch)
    texts, terminated = replies(r.tok, host["response"], host["lengths"])
    gold = r.prompts.world.gold([r.prompts.train[i] for i in indices], texts, terminated)
    metrics = {
        "reward": host["score"].mean(),  # what PPO maximises: RM score or the EOS penalty
        "rm_score": host["rm_score"].mean(),  # the normalised reward model alone
        **({} if gold is None else {"gold": gold.mean()}),
        "beta": beta,
        "response_length": host["lengths"].mean(),
        "ended_frac": host["ended"].mean(),
        "critic_warmup": float(warmup),
        "lr": r.lr_schedule(step * r.config.ppo.epochs * r.config.ppo.minibatches),
        **to_host(score_stats),
        **to_host(adv_stats),
        **upd_stats,
        **times,
    }
    compile_cache.mark_first_step()
    return state, host, {k: float(v) for k, v in metrics.items()}


# ------------------------------------------------------------------------------ the loop


def train(r: Run, state, stop_after):
    """Iterations until config.ppo.iterations, evaluating, logging and checkpointing."""
    c = r.config
    ckpt = Checkpoints(f"{r.workdir}/ckpt", c.train.keep_ckpts, c.train.async_checkpoint)
    stream = PromptStream(len(r.prompts.train_ids), c.prompts.seed)
    try:
        state, extras = _resume(ckpt, state, r.phases.state_sh, stream)
    except BaseException:
        ckpt.close()
        raise
    write_run_info(r.workdir, c)  # only now: a refused resume leaves the folder as it was
    health = ppo_eval.Health(c.health, c.kl.target, extras.get("health", {}))
    writer = MetricsWriter(r.workdir)
    n, flag, last, batch, metrics = c.ppo.iterations, {}, None, None, {}
    bar = tqdm(total=n, initial=int(state.step), dynamic_ncols=True, mininterval=1.0)
    try:
        if r.prompts.heldout and "sft_eval" not in extras:  # the SFT policy = reference
            last = ppo_eval.run_eval(r, state, r.roles.reference, 0, writer, extras)
            extras["sft_eval"] = {k: v.tolist() for k, v in last[1].items() if k != "texts"}
        with _stop_on_signals(flag):
            for it in range(int(state.step) + 1, n + 1):
                state, batch, metrics = iteration(r, state, stream.next(r.hp.batch_size))
                _check_finite(it, metrics, ckpt)
                _log(it, metrics, health, writer, bar, extras)
                if r.prompts.heldout and (it % c.eval.every == 0 or it == n):
                    last = ppo_eval.run_eval(r, state, state.params, it, writer, extras)
                stop = bool(flag) or it == stop_after
                if it % c.train.ckpt_every == 0 or it == n or stop:
                    extras["health"] = health.to_json()
                    save_finite(ckpt, it, state, stream.get_state(), extras, "PPO iteration")
                if stop:
                    bar.write(f"stopping after iteration {it} (checkpoint saved)")
                    break
    finally:
        close_all(bar.close, ckpt.close, writer.close)
    done = int(state.step) >= n
    return PPOResult(state, int(state.step), not done, None, batch, metrics), extras, last


def _resume(ckpt, state, state_sh, stream):
    """(state, extras) of the newest checkpoint (prompt stream restored), or as given."""
    restored = ckpt.restore_latest(abstract_like(state, state_sh))
    if restored is None:
        return state, {"eval_points": [], "time_s": {}}
    step, state, data_state, extras = restored
    stream.set_state(data_state)
    print(f"resumed from {ckpt.directory} at iteration {step}")
    return state, dict(extras)


def _check_finite(it, metrics, ckpt):
    """Stop on a NaN/Inf loss or KL, naming the iteration; the last good checkpoint stays."""
    for key in ("policy_loss", "value_loss", "kl", "reward"):
        if not math.isfinite(metrics[key]):
            raise NonFiniteLoss(
                f"{key} is {metrics[key]} at PPO iteration {it}; stopping: {ckpt.last_good()}")


def _log(it, metrics, health, writer, bar, extras):
    flags, messages = health.check(metrics)
    metrics.update(flags)
    for key in ("rollout", "score", "update"):
        extras["time_s"][key] = extras["time_s"].get(key, 0.0) + metrics[f"time_{key}"]
    writer.write(it, metrics)
    for msg in messages:
        bar.write(f"iteration {it} warning: {msg}")
    bar.update(1)
    shown = ("reward", "gold", "kl", "entropy")
    bar.set_postfix({k: f"{metrics[k]:.3g}" for k in shown if k in metrics}, refresh=False)

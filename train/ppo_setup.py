"""PPO settings and the compiled phases: what train/ppo.py builds once and calls every iteration.

    hp = hparams_from_config(config, prompt_len, stop_ids, pad_id)
    phases = make_phases(setup, hp, config.optim, config.critic_optim, total_steps, reward_fn)
    state = phases.init_state(actor_params, critic_params, kl_state, seed)
    gen = phases.rollout(state.params, prompt, key)                      # the sampler
    batch, stats = phases.score(state.params, reference, state.critic_params, reward, prompt, gen)
    batch, stats = phases.advantages(batch, beta)
    state, stats = phases.update(state, batch, kl_mean, train_actor=True)  # donates `state`

Built functions are cached on hashable arguments (model config, mesh, rules, settings,
optimizer settings, reward function): runs with the same settings share compiled functions.
Actor and critic get separate optimizers (own learning rate, own global-norm clip), so the
critic can warm up alone and vf_coef scales only the critic's gradient.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from model import sampler, sharding
from model.transformer import Transformer
from train import optim, rl_math
from train.ppo_phases import (
    UPDATE_KEYS,
    PPOState,
    advantages_phase,
    score_phase,
    update_phase,
)
from train.state import optax_state_shardings


@dataclasses.dataclass(frozen=True)
class Hparams:
    """Static PPO settings (hashable: part of the compile-cache key); configs/ppo/tiny.py
    documents each one."""

    batch_size: int
    prompt_len: int  # P
    max_new_tokens: int  # T
    temperature: float
    stop_ids: tuple  # every id that ends a reply (a model template may have several)
    pad_id: int
    eos_penalty: float | None
    kl_estimator: str
    reward_clip: float | None
    whiten_rewards: bool
    whiten_advantages: bool
    gamma: float
    lam: float
    clip_eps: float
    value_clip: float | None
    vf_coef: float
    entropy_coef: float
    ppo_epochs: int
    minibatches: int
    grad_accum: int


def _off_if_zero(x):
    return float(x) if x else None


def hparams_from_config(config, prompt_len: int, stop_ids, pad_id: int) -> Hparams:
    """stop_ids: one id or a tuple (data.chat.stop_ids: <|end|>, or a model's stop ids)."""
    r, p = config.rollout, config.ppo
    hp = Hparams(
        batch_size=r.batch_size,
        prompt_len=prompt_len,
        max_new_tokens=r.max_new_tokens,
        temperature=float(r.temperature),
        stop_ids=tuple(int(i) for i in np.atleast_1d(stop_ids)),
        pad_id=pad_id,
        eos_penalty=float(p.eos_penalty) if p.eos_trick else None,
        kl_estimator=config.kl.estimator,
        reward_clip=_off_if_zero(p.reward_clip),
        whiten_rewards=bool(p.whiten_rewards),
        whiten_advantages=bool(p.whiten_advantages),
        gamma=float(p.gamma),
        lam=float(p.lam),
        clip_eps=float(p.clip_eps),
        value_clip=_off_if_zero(p.value_clip),
        vf_coef=float(p.vf_coef),
        entropy_coef=float(p.entropy_coef),
        ppo_epochs=p.epochs,
        minibatches=p.minibatches,
        grad_accum=p.grad_accum,
    )
    if config.optim.grad_accum != 1 or config.critic_optim.grad_accum != 1:
        raise ValueError(
            "config optim.grad_accum / critic_optim.grad_accum must stay 1 in PPO: "
            "set ppo.grad_accum (microbatches per minibatch) instead"
        )
    if hp.batch_size % (hp.minibatches * hp.grad_accum):
        raise ValueError(
            f"config rollout.batch_size={hp.batch_size} must split into "
            f"ppo.minibatches={hp.minibatches} x ppo.grad_accum={hp.grad_accum} "
            "equal microbatches"
        )
    if hp.kl_estimator not in ("k1", "k2", "k3"):
        raise ValueError(f"config kl.estimator={hp.kl_estimator!r}: expected k1, k2 or k3")
    if not hp.temperature > 0:
        raise ValueError(f"config rollout.temperature={hp.temperature} must be > 0")
    return hp


@dataclasses.dataclass
class Phases:
    rollout: Any  # (actor, prompt (3 arrays), key) -> Generation
    score: Any  # (actor, reference, critic, reward_state, prompt, gen) -> (batch, stats)
    advantages: Any  # (batch, beta) -> (batch, stats)
    update: Any  # (state, batch, kl_mean, train_actor=True) -> (state, stats); donates state
    init_state: Any  # (actor_params, critic_params, kl_state, seed) -> PPOState
    state_sh: Any  # PPOState of shardings


def make_phases(
    setup, hp: Hparams, optim_cfg, critic_optim_cfg, total_steps: int, reward_fn
) -> Phases:
    """Compiled phases for this model, mesh and settings (cached: same arguments, same fns).
    total_steps (optimizer steps, for the schedules) = iterations · epochs · minibatches."""
    shards = setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]
    micro = hp.batch_size // (hp.minibatches * hp.grad_accum)
    if micro % shards:
        raise ValueError(
            f"config: microbatches of {micro} rows (rollout.batch_size / (ppo.minibatches x "
            f"ppo.grad_accum)) do not split over the mesh's data x fsdp = {shards} devices"
        )
    frozen = lambda cfg: tuple(sorted(cfg.items()))
    return _make_phases(
        setup.model_cfg,
        setup.mesh,
        tuple(setup.rules),
        hp,
        frozen(optim_cfg),
        frozen(critic_optim_cfg),
        int(total_steps),
        reward_fn,
    )


@functools.lru_cache(maxsize=8)
def _make_phases(cfg, mesh, rules, hp, optim_items, critic_items, total_steps, reward_fn):
    tx_actor = optim.make_optimizer(ml_collections.ConfigDict(dict(optim_items)), total_steps)
    tx_critic = optim.make_optimizer(ml_collections.ConfigDict(dict(critic_items)), total_steps)
    state_sh = state_shardings(cfg, mesh, rules, tx_actor, tx_critic)
    in_mesh = functools.partial(_in_mesh, mesh, rules)
    generate = sampler.make_generate(
        cfg,
        hp.max_new_tokens,
        temperature=hp.temperature,
        stop_ids=hp.stop_ids,
        pad_id=hp.pad_id,
        mesh=mesh,
        rules=rules,
    )
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    updates = {  # jit compiles lazily: the warm-up variant only when it is used
        train_actor: jax.jit(
            functools.partial(update_phase, cfg, hp, tx_actor, tx_critic, train_actor),
            in_shardings=(state_sh, batch_sh, repl),
            out_shardings=(state_sh, repl),
            donate_argnums=0,
        )
        for train_actor in (True, False)
    }

    def update(state, batch, kl_mean, train_actor=True):
        # only the [B, ...] arrays the loss reads, laid out as the compiled update expects
        batch = {k: jax.device_put(batch[k], batch_sh) for k in UPDATE_KEYS}
        return in_mesh(updates[bool(train_actor)])(state, batch, kl_mean)

    def init(actor, critic, kl, rng):
        return PPOState(
            step=jnp.zeros((), jnp.int32),
            params=actor,
            opt_state=tx_actor.init(actor),
            critic_params=critic,
            critic_opt_state=tx_critic.init(critic),
            kl=kl,
            rng=rng,
        )

    def init_state(actor, critic, kl_state, seed):
        rng = jax.random.key_data(jax.random.key(seed))
        return in_mesh(jax.jit(init, out_shardings=state_sh))(actor, critic, kl_state, rng)

    return Phases(
        rollout=lambda actor, prompt, key: generate(actor, *prompt, key),
        score=in_mesh(jax.jit(functools.partial(score_phase, cfg, hp, reward_fn))),
        advantages=in_mesh(jax.jit(functools.partial(advantages_phase, hp))),
        update=update,
        init_state=init_state,
        state_sh=state_sh,
    )


def _in_mesh(mesh, rules, fn):
    """fn traced and run under the mesh and the logical-axis rules."""

    def wrapped(*args, **kwargs):
        with sharding.activate(mesh, rules):
            return fn(*args, **kwargs)

    return wrapped


def state_shardings(cfg, mesh, rules, tx_actor, tx_critic) -> PPOState:
    """PPOState of shardings: params from the logical rules, optimizer moments like their
    params, scalars replicated."""
    repl = sharding.replicated(mesh)

    def role(head, tx):
        model, ones = Transformer(cfg, head=head), jnp.ones((1, 8), jnp.int32)
        params_sh, abstract = sharding.param_shardings(
            lambda r: model.init(r, ones, ones, ones)["params"], mesh, rules
        )
        return params_sh, optax_state_shardings(jax.eval_shape(tx.init, abstract), params_sh, repl)

    actor_sh, actor_opt_sh = role("lm", tx_actor)
    critic_sh, critic_opt_sh = role("scalar", tx_critic)
    return PPOState(
        step=repl,
        params=actor_sh,
        opt_state=actor_opt_sh,
        critic_params=critic_sh,
        critic_opt_state=critic_opt_sh,
        kl=rl_math.KLControllerState(*[repl] * 4),
        rng=repl,
    )

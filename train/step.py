"""One generic jitted train step shared by every stage.

`loss_fn(params, batch, rng) -> (loss_sum, sums)` returns a SUM over its examples/tokens and a
dict of metric sums that must include "weight" (the number of examples/tokens summed). The step
divides by the total weight of the whole batch, so gradient accumulation over microbatches is
exactly the big-batch gradient (not a mean of microbatch means).
"""

import jax
import jax.numpy as jnp
import optax

from model import sharding
from train.state import TrainState


def _microbatches(batch, n: int):
    """[B, ...] -> [n, B/n, ...]; microbatch k = rows k, k+n, ... (rows stay on their device)."""

    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into optim.grad_accum={n}")
        return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def compute_grads(loss_fn, params, batch, rng, grad_accum: int):
    """Summed gradients and metric sums over `grad_accum` microbatches (a lax.scan)."""
    grad_fn = jax.grad(loss_fn, has_aux=True)
    if grad_accum == 1:
        return grad_fn(params, batch, rng)
    rngs = jax.random.split(rng, grad_accum)

    def body(acc, xs):
        micro, micro_rng = xs
        micro = jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(
                x, jax.sharding.PartitionSpec(sharding.BATCH)
            ),
            micro,
        )
        grads, sums = grad_fn(params, micro, micro_rng)
        return jax.tree.map(jnp.add, acc, (grads, sums)), None

    zeros = jax.tree.map(
        jnp.zeros_like, jax.eval_shape(grad_fn, params, _first(batch, grad_accum), rng)
    )
    (grads, sums), _ = jax.lax.scan(body, zeros, (_microbatches(batch, grad_accum), rngs))
    return grads, sums


def _first(batch, n):
    return jax.tree.map(lambda x: x[: x.shape[0] // n], batch)


def normalise(sums: dict) -> dict:
    """Metric sums -> means per unit of weight; "weight" itself is kept as a count."""
    w = jnp.maximum(sums["weight"], 1.0)
    return {k: (v if k == "weight" else v / w) for k, v in sums.items()}


def train_step(state: TrainState, batch, *, loss_fn, tx, grad_accum: int):
    rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
    grads, sums = compute_grads(loss_fn, state.params, batch, step_rng, grad_accum)
    weight = jnp.maximum(sums["weight"], 1.0)
    grads = jax.tree.map(lambda g: g / weight, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = normalise(sums)
    metrics["grad_norm"] = optax.global_norm(grads)
    new_state = TrainState(
        step=state.step + 1, params=params, opt_state=opt_state, rng=jax.random.key_data(rng)
    )
    return new_state, metrics


def make_train_step(loss_fn, tx, grad_accum, state_sh, mesh, rules):
    """jit(train_step) with in/out shardings; the old state is donated (it is replaced)."""
    batch_sh = sharding.batch_sharding(mesh)
    step = jax.jit(
        lambda s, b: train_step(s, b, loss_fn=loss_fn, tx=tx, grad_accum=grad_accum),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, sharding.replicated(mesh)),
        donate_argnums=0,
    )

    def run(state, batch):
        with sharding.activate(mesh, rules):
            return step(state, batch)

    return run


def make_eval_step(loss_fn, params_sh, mesh, rules):
    """jit of the summed loss on one batch (no gradients); returns metric sums."""
    fn = jax.jit(
        lambda p, b: loss_fn(p, b, jax.random.key(0))[1],
        in_shardings=(params_sh, sharding.batch_sharding(mesh)),
    )

    def run(params, batch):
        with sharding.activate(mesh, rules):
            return fn(params, batch)

    return run

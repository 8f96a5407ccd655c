"""TrainState: everything a step changes, one pytree (checkpointed whole)."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32[2] key data, so checkpoints hold plain arrays


def init_state(params, tx, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
    )


def state_shardings(params_shardings, tx, params, replicated):
    """Shardings of a TrainState: optimizer moments follow their parameters."""
    abstract = jax.eval_shape(lambda p: init_state(p, tx, 0), params)
    opt_sh = optax_state_shardings(abstract.opt_state, params_shardings, replicated)
    return TrainState(step=replicated, params=params_shardings, opt_state=opt_sh, rng=replicated)


def optax_state_shardings(opt_state, params_shardings, replicated):
    """Any subtree of the optimizer state shaped like the params gets the params' shardings."""
    params_struct = jax.tree.structure(params_shardings)

    def visit(node):
        try:
            if jax.tree.structure(node) == params_struct:
                return params_shardings
        except Exception:  # noqa: BLE001 - some optax nodes are not comparable
            pass
        return None

    def map_node(node):
        found = visit(node)
        if found is not None:
            return found
        if isinstance(node, tuple) and not hasattr(node, "_fields"):
            return tuple(map_node(n) for n in node)
        if hasattr(node, "_fields"):  # NamedTuple states (ScaleByAdamState ...)
            return type(node)(*(map_node(n) for n in node))
        return jax.tree.map(lambda _: replicated, node)

    return map_node(opt_state)

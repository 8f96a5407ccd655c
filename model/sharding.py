"""Mesh, the ONE logical-axis rules table, and sharded parameter initialisation.

The model names every parameter and key activation axis logically ("embed", "mlp", "batch" ...).
`RULES` maps those names to the mesh axes ("data", "fsdp", "tensor"); a config may override
entries (`mesh.rules`). Parameters are sharded over "fsdp" on their embed axis (ZeRO-3 style)
and over "tensor" on heads / mlp / vocab (Megatron style); activations over ("data", "fsdp") on
the batch axis.
"""

import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

RULES = (
    # parameters
    ("vocab", "tensor"),
    # The input embedding table: a gather from a vocab-sharded table makes XLA replicate it.
    ("embed_vocab", None),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    # activations
    ("batch", BATCH),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def make_rules(overrides=None) -> tuple:
    """RULES with entries replaced by `overrides` (a dict or pairs: logical name -> mesh axes)."""
    overrides = dict(overrides or {})
    names = {name for name, _ in RULES}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(
            f"mesh.rules: unknown logical axis names {unknown}; known: {sorted(names)}"
        )
    for name, axes in overrides.items():
        for axis in (axes,) if isinstance(axes, str) or axes is None else axes:
            if axis is not None and axis not in MESH_AXES:
                raise ValueError(f"mesh.rules[{name!r}]: {axis!r} is not a mesh axis {MESH_AXES}")
    return tuple((name, _as_axes(overrides.get(name, axes))) for name, axes in RULES)


def _as_axes(axes):
    return tuple(axes) if isinstance(axes, list) else axes


def mesh_shape(sizes: dict, n_devices: int) -> tuple[int, int, int]:
    """Resolves {"data": 1, "fsdp": -1, "tensor": 1}; one -1 takes the remaining devices."""
    shape = [int(sizes[a]) for a in MESH_AXES]
    wild = [i for i, s in enumerate(shape) if s == -1]
    if len(wild) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, shape))}: sizes must be >= 1 with one -1 at most"
        )
    fixed = math.prod(s for s in shape if s != -1)
    if wild:
        if n_devices % fixed:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, shape))}: fixed axes ({fixed} devices) do not divide "
                f"the {n_devices} available devices"
            )
        shape[wild[0]] = n_devices // fixed
    if math.prod(shape) != n_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices but "
            f"{n_devices} are available (set one mesh axis to -1 to use them all)"
        )
    return tuple(shape)


def make_mesh(sizes: dict, devices=None) -> Mesh:
    """Mesh over all (or the given) devices with Auto axis types."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(sizes, len(devices))
    if devices is jax.devices() or len(devices) == jax.device_count():
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


@contextlib.contextmanager
def activate(mesh: Mesh, rules):
    """Everything traced inside sees the mesh and the logical rules (activation constraints)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def logical_shardings(boxed_tree, mesh: Mesh, rules):
    """NamedShardings for a tree of nn.LogicallyPartitioned boxes (e.g. from eval_shape(init))."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def host_to_global(x, sharding: NamedSharding):
    """A host value that every process holds whole (the same prompts, the same key) → a jax.Array
    laid out by `sharding`. In one process jit takes numpy directly; across processes it must
    be given global arrays, each process supplying the shards of its own devices."""
    if jax.process_count() == 1 or (isinstance(x, jax.Array) and x.sharding == sharding):
        return x
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = np.asarray(jax.random.key_data(x))
        impl = jax.random.key_impl(x)
        raw = jax.make_array_from_callback(data.shape, sharding, lambda idx: data[idx])
        return jax.random.wrap_key_data(raw, impl=impl)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def check_divisible(boxed_tree, mesh: Mesh, rules):
    """Raises ValueError unless every sharded parameter dim divides by its mesh axes' product.

    One line naming the parameter, dim, logical axis and mesh axes, instead of an XLA error (or
    silent padding) from inside jit.
    """
    bad = []
    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
    for path, box in jax.tree_util.tree_leaves_with_path(boxed_tree, is_leaf=is_box):
        if not is_box(box):
            continue
        spec = nn.logical_to_mesh_axes(box.names, rules)
        for dim, (name, size, axes) in enumerate(zip(box.names, box.value.shape, spec)):
            axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            n = math.prod(mesh.shape[a] for a in axes)
            if size % n:
                where = "/".join(str(getattr(k, "key", k)) for k in path)
                on = ", ".join(f"{a}={mesh.shape[a]}" for a in axes)
                on += f" (product {n})" if len(axes) > 1 else ""
                bad.append(f"{where} dim {dim} ({name}={size}) is not divisible by mesh {on}")
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ValueError(f"{bad[0]}{more}: change the model or mesh sizes, or mesh.rules")


def checked_abstract_params(init_fn, rng, mesh: Mesh, rules):
    """eval_shape(init_fn) traced OUTSIDE the mesh, then `check_divisible`.

    Outside the mesh nothing is sharding-constrained yet, so an indivisible dim reaches our
    check instead of failing inside the trace with jax's message.
    """
    boxed = jax.eval_shape(init_fn, rng)
    check_divisible(boxed, mesh, rules)
    return boxed


def init_params(init_fn, rng, mesh: Mesh, rules):
    """Initialises parameters directly sharded: eval_shape → shardings → jit(out_shardings).

    `init_fn(rng)` returns the boxed `variables["params"]` of a Linen init. Returns
    (params, shardings) with plain arrays (boxes removed).
    """
    boxed = checked_abstract_params(init_fn, rng, mesh, rules)
    with activate(mesh, rules):
        shardings = nn.meta.unbox(logical_shardings(boxed, mesh, rules))
        params = jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=shardings)(rng)
    return params, shardings


def param_shardings(init_fn, mesh: Mesh, rules):
    """Shardings (and abstract shapes) of the parameters `init_fn` would create, no compute."""
    boxed = checked_abstract_params(init_fn, jax.random.key(0), mesh, rules)
    with activate(mesh, rules):
        shardings = nn.meta.unbox(logical_shardings(boxed, mesh, rules))
    # Unboxed outside the mesh context: unbox() would add a sharding constraint to the
    # abstract values.
    return shardings, nn.meta.unbox(boxed)

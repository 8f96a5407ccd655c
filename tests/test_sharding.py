"""model/sharding.py: mesh and rules errors, the divisibility check, and a (2,2,2)-mesh forward
pass that must equal the single-device one (8 virtual CPU devices from conftest.py)."""

import functools
import math
import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs.common import model_config
from model import sharding, transformer
from model.config import ModelConfig

B, L = 4, 16  # batch divisible by data x fsdp = 4
# Both sides of every comparison compile alike; skipping LLVM's optimisations halves compile time.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _cfg(**overrides) -> ModelConfig:
    return ModelConfig.from_config(model_config("test", **overrides))


def _inputs():
    """Two packed rows, one left-padded row, one plain row."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 320, size=(B, L)).astype(np.int32)
    positions = np.tile(np.arange(L, dtype=np.int32), (B, 1))
    segs = np.ones((B, L), np.int32)
    for r in (0, 1):
        positions[r, 7:], segs[r, 7:] = np.arange(L - 7), 2
    positions[2, :5], segs[2, :5] = 0, 0
    positions[2, 5:] = np.arange(L - 5)
    return tokens, positions, segs


def _init_fn(model):
    return lambda rng: model.init(rng, *[x[:1] for x in _inputs()])["params"]


def _strip(spec):
    """PartitionSpec as a tuple without trailing Nones (P(None, None) means replicated too)."""
    entries = list(spec)
    while entries and entries[-1] is None:
        entries.pop()
    return tuple(entries)


def _ways(mesh, axes):
    """How many pieces a dim mapped to `axes` (None, "fsdp" or ("data", "fsdp")) is cut into."""
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


# ----------------------------------------------------------------------------- mesh errors


def test_mesh_shape_resolves_one_wildcard():
    assert sharding.mesh_shape({"data": 1, "fsdp": -1, "tensor": 2}, 8) == (1, 4, 2)
    assert sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert sharding.mesh_shape({"data": -1, "fsdp": 1, "tensor": 1}, 8) == (8, 1, 1)


@pytest.mark.parametrize("sizes,message", [
    ({"data": 3, "fsdp": 1, "tensor": 1}, "needs 3 devices but 8 are available"),
    ({"data": 2, "fsdp": 2, "tensor": 4}, "needs 16 devices but 8 are available"),
    ({"data": 3, "fsdp": -1, "tensor": 1}, "fixed axes (3 devices) do not divide the 8"),
    ({"data": -1, "fsdp": -1, "tensor": 2}, "one -1 at most"),
    ({"data": 0, "fsdp": -1, "tensor": 2}, "sizes must be >= 1"),
])
def test_bad_mesh_is_a_clear_error(sizes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sharding.mesh_shape(sizes, 8)
    with pytest.raises(ValueError, match=re.escape(message)):
        sharding.make_mesh(sizes)


def test_make_mesh_axes_and_device_subset():
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 2})
    assert mesh.axis_names == sharding.MESH_AXES and dict(mesh.shape) == dict(
        data=1, fsdp=4, tensor=2)
    sub = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": -1}, devices=jax.devices()[:4])
    assert dict(sub.shape) == dict(data=2, fsdp=1, tensor=2) and sub.devices.size == 4
    assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"), None)


# ------------------------------------------------------------------------------------ rules


def test_make_rules_overrides_and_errors():
    default = dict(sharding.make_rules())
    assert default == dict(sharding.RULES)
    rules = dict(sharding.make_rules({"embed": None, "batch": ["data"]}))
    assert rules["embed"] is None and rules["batch"] == ("data",)
    assert {k: v for k, v in rules.items() if k not in ("embed", "batch")} == {
        k: v for k, v in default.items() if k not in ("embed", "batch")}
    with pytest.raises(ValueError, match=r"unknown logical axis names \['embd'\]"):
        sharding.make_rules({"embd": "fsdp"})
    with pytest.raises(ValueError, match=r"mesh.rules\['mlp'\]: 'model' is not a mesh axis"):
        sharding.make_rules({"mlp": "model"})
    with pytest.raises(ValueError, match=r"mesh.rules\['batch'\]: 'pod' is not a mesh axis"):
        sharding.make_rules({"batch": ("data", "pod")})


def test_rule_overrides_reach_param_shardings():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    init_fn = _init_fn(transformer.Transformer(_cfg()))
    shardings, abstract = sharding.param_shardings(
        init_fn, mesh, sharding.make_rules({"embed": None}))
    q = shardings["layers"]["block"]["self_attn"]["q_proj"]["kernel"]
    assert _strip(q.spec) == (None, None, "tensor")
    assert abstract["layers"]["block"]["self_attn"]["q_proj"]["kernel"].shape == (2, 32, 4, 8)


# ------------------------------------------------------------------------ divisibility check


def test_indivisible_param_dims_fail_before_compiling():
    model = transformer.Transformer(_cfg())  # n_kv_heads=2 cannot split over tensor=4
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    rules = sharding.make_rules()
    want = re.escape("layers/block/self_attn/k_proj/kernel dim 2 (kv_heads=2) is not divisible "
                     "by mesh tensor=4 (and 1 more)")  # v_proj too
    with pytest.raises(ValueError, match=want):
        sharding.init_params(_init_fn(model), jax.random.key(0), mesh, rules)
    with pytest.raises(ValueError, match=want):
        sharding.param_shardings(_init_fn(model), mesh, rules)


def test_indivisible_over_two_mesh_axes_names_both():
    model = transformer.Transformer(_cfg(d_model=36))
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    rules = sharding.make_rules({"embed": ("data", "fsdp")})
    want = re.escape("embed_tokens/embedding dim 1 (embed=36) is not divisible by mesh data=2, "
                     "fsdp=4 (product 8)")
    with pytest.raises(ValueError, match=want):
        sharding.param_shardings(_init_fn(model), mesh, rules)
    # The same model fits when embed goes over fsdp alone (36 = 4 x 9).
    sharding.param_shardings(_init_fn(model), mesh, sharding.make_rules())


# -------------------------------------------------------------- (2,2,2) mesh == one device


@pytest.fixture(scope="module")
def mesh_setup():
    cfg = _cfg()
    model = transformer.Transformer(cfg)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = sharding.make_rules()
    params, shardings = sharding.init_params(_init_fn(model), jax.random.key(0), mesh, rules)
    return cfg, model, mesh, rules, params, shardings


def test_params_are_sharded_as_the_rules_say(mesh_setup):
    """Each parameter's spec is its logical names looked up in the rules table."""
    _, _, mesh, rules, params, shardings = mesh_setup
    table = dict(rules)
    attn, mlp = params["layers"]["block"]["self_attn"], params["layers"]["block"]["mlp"]
    named = [
        (params["embed_tokens"]["embedding"], ("embed_vocab", "embed")),
        (attn["q_proj"]["kernel"], ("layers", "embed", "q_heads", "head_dim")),
        (attn["k_proj"]["kernel"], ("layers", "embed", "kv_heads", "head_dim")),
        (attn["o_proj"]["kernel"], ("layers", "q_heads", "head_dim", "embed")),
        (mlp["gate_proj"]["kernel"], ("layers", "embed", "mlp")),
        (mlp["down_proj"]["kernel"], ("layers", "mlp", "embed")),
        (params["lm_head"]["kernel"], ("embed", "vocab")),
        (params["norm"]["scale"], ("norm",)),
    ]
    n_sharded = 0
    for x, names in named:
        spec = tuple(table[n] for n in names)
        assert _strip(x.sharding.spec) == _strip(spec), names
        shard = tuple(size // _ways(mesh, a) for size, a in zip(x.shape, spec, strict=True))
        assert x.addressable_shards[0].data.shape == shard, names
        n_sharded += shard != x.shape
    assert n_sharded >= 6  # the default rules do shard the big matrices
    q_spec = _strip(attn["q_proj"]["kernel"].sharding.spec)
    assert q_spec == (None, "fsdp", "tensor")  # FSDP on embed, Megatron on heads
    for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings), strict=True):
        assert x.sharding == s


def test_mesh_forward_equals_single_device(mesh_setup):
    _, model, mesh, rules, params, shardings = mesh_setup
    inputs = _inputs()
    fwd = lambda p, *xs: model.apply({"params": p}, *xs)
    host_params = jax.device_get(params)
    want = jit(fwd)(jax.device_put(host_params, jax.devices()[0]), *inputs)
    batch = sharding.batch_sharding(mesh)
    with sharding.activate(mesh, rules):
        got = jit(fwd, in_shardings=(shardings, batch, batch, batch))(params, *inputs)
    assert _strip(got.sharding.spec) == (("data", "fsdp"), None, "tensor")  # logits constraint
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)
    # The scalar head on the same sharded trunk (lm_head swapped for a random score layer).
    scalar = transformer.Transformer(model.cfg, head="scalar")
    s_shardings, abstract = sharding.param_shardings(_init_fn(scalar), mesh, rules)
    rng = np.random.default_rng(1)
    score = {k: rng.normal(size=x.shape).astype(np.float32) for k, x in abstract["score"].items()}
    s_params = {**{k: v for k, v in params.items() if k != "lm_head"},
                "score": jax.device_put(score, s_shardings["score"])}
    s_fwd = lambda p, *xs: scalar.apply({"params": p}, *xs)
    s_want = jit(s_fwd)({**host_params, "score": score}, *inputs)
    with sharding.activate(mesh, rules):
        s_got = jit(s_fwd, in_shardings=(s_shardings, batch, batch, batch))(s_params, *inputs)
    assert s_got.shape == (B, L)
    np.testing.assert_allclose(np.asarray(s_got), np.asarray(s_want), rtol=0, atol=1e-5)

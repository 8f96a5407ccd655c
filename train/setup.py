"""What every stage sets up the same way: mesh and rules, the model, a sharded TrainState."""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from model import estimate, sharding
from model.config import ModelConfig
from model.transformer import Transformer
from train import distributed, optim
from train.state import init_state, state_shardings

# jax device_kind prefixes of the accelerators whose datasheet peaks model/estimate.py keeps.
DEVICE_KINDS = {"NVIDIA H100": "H100", "NVIDIA H200": "H200", "NVIDIA A100": "A100",
                "Tesla V100": "V100", "TPU v4": "TPU v4", "TPU v5p": "TPU v5p",
                "TPU v5 lite": "TPU v5e", "TPU v5e": "TPU v5e"}


@dataclasses.dataclass
class Setup:
    """The model, mesh and rules of a run, plus how to build its parameters."""

    model_cfg: ModelConfig
    mesh: jax.sharding.Mesh
    rules: tuple

    def model(self, head="lm") -> Transformer:
        return Transformer(self.model_cfg, head=head)

    def init_fn(self, head="lm"):
        model, ones = self.model(head), jnp.ones((1, 8), jnp.int32)
        return lambda rng: model.init(rng, ones, ones, ones)["params"]

    def init_params(self, seed: int, head="lm"):
        return sharding.init_params(self.init_fn(head), jax.random.key(seed), self.mesh,
                                    self.rules)

    def param_shardings(self, head="lm"):
        return sharding.param_shardings(self.init_fn(head), self.mesh, self.rules)


def make_setup(config) -> Setup:
    distributed.check_same_config(config)  # every process runs the same config, or none runs
    mesh = sharding.make_mesh(dict(config.mesh.items()))
    rules = sharding.make_rules(dict(config.mesh.rules))
    return Setup(ModelConfig.from_config(config.model), mesh, rules)


def make_train_state(setup: Setup, params, params_sh, optim_cfg, total_steps: int, seed: int):
    """(state, state_shardings, tx): AdamW state sharded like the params."""
    tx = optim.make_optimizer(optim_cfg, total_steps)
    state_sh = state_shardings(params_sh, tx, params, sharding.replicated(setup.mesh))
    state = jax.jit(lambda p: init_state(p, tx, seed), out_shardings=state_sh)(params)
    return state, state_sh, tx


def peak_flops() -> float:
    """Per-device peak: the datasheet on accelerators, a measured matmul rate on CPU."""
    kind = jax.devices()[0].device_kind
    for prefix, name in DEVICE_KINDS.items():
        if kind.startswith(prefix):
            return estimate.accelerator(name).peak_flops
    return measured_cpu_matmul_flops()


@functools.cache
def measured_cpu_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """Median FLOP/s of an n×n fp32 matmul on the host (the whole CPU, all cores)."""
    device = jax.local_devices(backend="cpu")[0]  # this host's: devices()[0] may be another's
    a = jax.device_put(np.random.default_rng(0).standard_normal((n, n), np.float32), device)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mm(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times))


def total_peak_flops() -> float:
    """Peak of the whole run: per-device datasheet × devices, or the measured host CPU rate."""
    if jax.devices()[0].platform == "cpu":
        return measured_cpu_matmul_flops()
    return peak_flops() * jax.device_count()

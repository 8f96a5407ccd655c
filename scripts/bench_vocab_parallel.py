"""Compiled peak memory of token log-probs (+ gradients): dense logits vs model/vocab_parallel,
at the 1b config's shapes, by abstract compilation only (nothing runs, no memory is used).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        .venv/bin/python -m scripts.bench_vocab_parallel [--size 1b --tokens 16384 --chunk 1024]

Prints, per device, XLA's temp-buffer size (the intermediate arrays: the [tokens, vocab] fp32
logits and their gradient for the dense path) and the argument size, for a global batch of
`--tokens` tokens on a (data 1, fsdp 2, tensor 4) mesh.
"""

import argparse

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import common
from model import sharding
from model.vocab_parallel import ROWS, dense_stats, vocab_parallel_stats


def loss(stats):
    lse, target, _ = stats
    return jnp.mean(lse - target)


def memory(fn, args) -> tuple[float, float]:
    m = jax.jit(jax.grad(fn, argnums=(0, 1))).lower(*args).compile().memory_analysis()
    return m.temp_size_in_bytes / 2**20, m.argument_size_in_bytes / 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8 * 2048)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--size", default="1b")
    a = ap.parse_args()
    cfg = common.model_config(a.size)
    d, v = cfg.d_model, cfg.vocab_size
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    spec = lambda shape, dtype, p: jax.ShapeDtypeStruct(shape, dtype,
                                                        sharding=NamedSharding(mesh, p))
    args = (spec((a.tokens, d), jnp.bfloat16, P(ROWS, None)),
            spec((d, v), jnp.bfloat16, P(None, "tensor")),
            spec((a.tokens,), jnp.int32, P(ROWS)))
    with jax.set_mesh(mesh):
        dense = memory(lambda h, w, t: loss(dense_stats(h, w, t)), args)
        par = memory(lambda h, w, t: loss(vocab_parallel_stats(h, w, t, mesh, chunk=a.chunk)),
                     args)
    print(f"{a.size}: {a.tokens} tokens, d_model {d}, vocab {v}, mesh (1, 2, 4), bf16 inputs, "
          f"fp32 logits; loss + grads, per device (MiB)")
    print(f"  dense logits:        temp {dense[0]:9.1f}   arguments {dense[1]:7.1f}")
    print(f"  vocab-parallel (chunk {a.chunk}): temp {par[0]:9.1f}   arguments {par[1]:7.1f}")
    print(f"  ratio dense / vocab-parallel temp: {dense[0] / max(par[0], 1e-9):.1f}x")


if __name__ == "__main__":
    main()

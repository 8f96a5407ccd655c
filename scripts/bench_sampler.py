"""Sampler throughput: compile time, tokens/s, per-step latency and the memory-bandwidth roofline.

    python -m scripts.bench_sampler --size tiny --batch 32 --new_tokens 64 --prompt_len 32

Random parameters of a named size (configs/common.py) and random left-padded prompts; the stop
is disabled so every run decodes exactly --new_tokens steps. A run with one new token times the
prefill alone, so the decode step is (t(T) - t(1)) / (T - 1).

Roofline: one decode step must read every parameter and the KV cache, so
    t_min = (parameter bytes + KV-cache bytes) / memory bandwidth,
with the KV cache counted as the whole buffer (P + T - 1 slots: attention reads all of them,
masked) and the bandwidth measured here with a large NumPy copy (read + write bytes / time).
"""

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs.common import model_config
from model import sampler
from model.config import ModelConfig
from model.transformer import Transformer


def measure_bandwidth(n_bytes=256 << 20, repeats=5) -> float:
  """Bytes/s of a large array copy (it reads n_bytes and writes n_bytes); best of `repeats`."""
  src = np.ones(n_bytes // 8, np.float64)
  dst = np.empty_like(src)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    np.copyto(dst, src)
    best = min(best, time.perf_counter() - start)
  return 2 * src.nbytes / best


def random_prompts(rng, batch, prompt_len, vocab_size):
  lengths = rng.integers(max(1, prompt_len // 2), prompt_len + 1, size=batch)
  prompts = [rng.integers(8, vocab_size, size=n).tolist() for n in lengths]  # skip special ids
  return sampler.left_pad(prompts, pad_id=0, length=prompt_len)


def time_generate(cfg, params, batch, new_tokens, repeats, **sampling):
  """(compile seconds, median run seconds) of one compiled generate."""
  generate = sampler.make_generate(cfg, new_tokens, stop_ids=(), **sampling)
  args = (params, *batch, jax.random.key(0))
  start = time.perf_counter()
  compiled = generate.jitted.lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))  # warm-up (first-run allocations)
  runs = []
  for i in range(repeats):
    args = (*args[:-1], jax.random.key(i + 1))
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    runs.append(time.perf_counter() - start)
  assert int(out.lengths_B.min()) == new_tokens, "the stop is disabled: rows must run to the cap"
  return compile_s, statistics.median(runs)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--size", default="tiny")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--prompt_len", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--temperature", type=float, default=1.0)
  ap.add_argument("--top_k", type=int, default=0)
  ap.add_argument("--top_p", type=float, default=1.0)
  ap.add_argument("--greedy", action="store_true")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  if args.new_tokens < 2:
    ap.error("--new_tokens must be >= 2 (one step is the prefill-only reference)")

  cfg = ModelConfig.from_config(model_config(args.size))
  z = jnp.zeros((1, 1), jnp.int32)
  params = jax.jit(lambda r: nn.meta.unbox(Transformer(cfg).init(r, z, z, z)["params"]))(
      jax.random.key(args.seed))
  batch = random_prompts(np.random.default_rng(args.seed), args.batch, args.prompt_len,
                         cfg.vocab_size)
  sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                  greedy=args.greedy)
  compile_s, run_s = time_generate(cfg, params, batch, args.new_tokens, args.repeats, **sampling)
  _, prefill_s = time_generate(cfg, params, batch, 1, args.repeats, **sampling)
  step_s = (run_s - prefill_s) / (args.new_tokens - 1)

  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  slots = args.prompt_len + args.new_tokens - 1
  kv_bytes = (2 * cfg.n_layers * args.batch * slots * cfg.n_kv_heads * cfg.head_dim
              * jnp.dtype(cfg.dtype).itemsize)
  bandwidth = measure_bandwidth()
  roofline_s = (param_bytes + kv_bytes) / bandwidth

  rows = [
      ("device", f"{jax.devices()[0].platform} x{jax.device_count()}"),
      ("model", f"{args.size}: {cfg.param_count() / 1e6:.2f}M params, {cfg.compute_dtype}"),
      ("batch x prompt x new", f"{args.batch} x {args.prompt_len} x {args.new_tokens}"),
      ("compile (s)", f"{compile_s:.2f}"),
      ("generate, median (s)", f"{run_s:.4f}"),
      ("tokens/s", f"{args.batch * args.new_tokens / run_s:,.0f}"),
      ("prefill (ms)", f"{prefill_s * 1e3:.2f}"),
      ("decode step (ms)", f"{step_s * 1e3:.3f}"),
      ("bytes/step: params+KV (MB)", f"{param_bytes / 1e6:.2f} + {kv_bytes / 1e6:.2f}"),
      ("memory bandwidth (GB/s)", f"{bandwidth / 1e9:.1f}"),
      ("roofline step (ms)", f"{roofline_s * 1e3:.3f}"),
      ("roofline fraction", f"{roofline_s / step_s:.1%}"),
  ]
  width = max(len(k) for k, _ in rows)
  for key, value in rows:
    print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
  main()

"""Train-step variants of one model size, timed alternately in one process (paired ratios).

    python -m scripts.bench_variants --size tiny --variant base: \
        --variant chunk64:attention_chunk=64 --variant unroll:scan_unroll=4,attention_chunk=64

Each --variant is NAME:KEY=VALUE,... (ModelConfig overrides on top of the size, ints/bools/strs
parsed); the first is the reference of the ratios. `--torch` adds the PyTorch baseline
(needs requirements-bench.txt). Same timing as `scripts.bench train` (docs/performance.md).
"""

import argparse
import os
import statistics

from train import cli

if __name__ == "__main__":  # before jax loads (scripts/bench.py)
    cli.reexec_with_child_env()

from scripts import bench  # noqa: E402
from scripts import bench_jax as bj  # noqa: E402


def _parse(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, value = item.split("=")
        if value in ("True", "False"):
            overrides[key] = value == "True"
        else:
            try:
                overrides[key] = int(value)
            except ValueError:
                overrides[key] = value
    return name, overrides


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--torch", action="store_true")
    args = ap.parse_args(argv)
    base = bj.model_config(args.size)
    batch_np = bj.lm_batch(args.batch, args.seq, base.vocab_size)
    runners, first = {}, {}
    for spec in args.variant:
        name, overrides = _parse(spec)
        cfg = bj.model_config(args.size, max_seq_len=max(args.seq, base.max_seq_len), **overrides)
        runners[name], first[name] = bj.jax_train_runner(cfg, batch_np)
    if args.torch:
        from scripts import bench_torch

        runners["torch"], first["torch"] = bench_torch.torch_train_runner(
            base, batch_np, bj.BENCH_OPTIM
        )
    for run in runners.values():
        run()
    load0 = os.getloadavg()[0]
    times = bench.alternate(runners, args.repeats, args.iters)
    ref = next(iter(runners))
    tokens = args.batch * args.seq
    print(
        f"\n{args.size} {args.batch}x{args.seq}, {args.repeats}x{args.iters} steps, "
        f"load {load0:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    for name, ts in times.items():
        med = statistics.median(ts)
        line = f"  {name:<24} {med * 1e3:8.1f} ms  {tokens / med:9.0f} tok/s"
        line += f"  first {first[name]:.1f} s"
        line += f"  {ref}/this {bench.paired_ratio(times[ref], ts):.3f}"
        if "torch" in times and name != "torch":
            line += f"  this vs torch {bench.paired_ratio(times['torch'], ts):.3f}x"
        print(line)


if __name__ == "__main__":
    main()

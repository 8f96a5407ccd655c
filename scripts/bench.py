"""Benchmarks: train-step MFU, sampler roofline, against PyTorch / Hugging Face in the same run.

    python -m scripts.bench train --size tiny --batch 8 --seq 256 --torch
    python -m scripts.bench sample --size tiny --sample_batch 32 --new_tokens 64 --hf
    python -m scripts.bench ppo --size tiny --sample_batch 64 --prompt_len 48 --new_tokens 32
    python -m scripts.bench ppo --size tiny --sample_batch 64 --prompt_len 48 --new_tokens 32 \\
        --trl --repeats 5 [--no_stop]                          # against TRL's PPOTrainer
    python -m scripts.bench profile --size 20m --batch 4     # XLA op time by kind (CPU)
    python -m scripts.bench cpu --json runs/bench_cpu.json    # the docs/performance.md tables
    python -m scripts.bench gpu [--smoke]                      # what scripts/bench_gpu.sh runs

Baselines need requirements-bench.txt (torch, transformers, trl) in a separate venv.

Method (docs/performance.md):
- train: tokens/s = batch·seq / median step time; MFU = tokens/s · ModelConfig.flops_per_token
  (6·N + causal attention) / peak, the peak being a matmul rate measured on the spot on CPU
  (train.setup.measured_cpu_matmul_flops) or the datasheet dense bf16 peak on GPU/TPU.
  Compile time = first call (trace + compile + one step) − the median step.
- sample: tokens/s = batch·new_tokens / median `generate` time; one decode step is
  (t(T) − t(1)) / (T − 1), against the roofline (param bytes + KV-cache bytes) / bandwidth.
- baselines run in the same process, alternating with JAX repeat by repeat (order flipped each
  repeat), so load from other processes hits both; ratios are medians of the paired ratios.
"""

import argparse
import json
import os
import statistics
import time

from train import cli

if __name__ == "__main__":  # before jax loads, so the baselines in this process get it too
    cli.reexec_with_child_env()

from scripts import bench_jax as bj  # noqa: E402
from scripts import bench_print as bp  # noqa: E402

_SINK = {"path": "", "results": []}


def emit(result):
    """Keeps a result and rewrites the --json file, so a run cut short keeps what it measured."""
    if result is None:
        return None
    _SINK["results"].append(dict(result, date=time.strftime("%Y-%m-%d %H:%M:%S %Z")))
    if _SINK["path"]:
        os.makedirs(os.path.dirname(os.path.abspath(_SINK["path"])), exist_ok=True)
        with open(_SINK["path"], "w") as f:
            json.dump(_SINK["results"], f, indent=1)
    return result


def alternate(runners: dict, repeats: int, iters: int) -> dict:
    """Seconds per call of each runner: `repeats` rounds of `iters` calls, runners interleaved."""
    times = {name: [] for name in runners}
    names = list(runners)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            for _ in range(iters):
                runners[name]()
            times[name].append((time.perf_counter() - start) / iters)
    return times


def paired_ratio(slow: list, fast: list) -> float:
    """Median over repeats of slow[i] / fast[i] (>1: `fast` is faster)."""
    return statistics.median(s / f for s, f in zip(slow, fast))


def thread_info(with_torch: bool) -> dict:
    info = {"malloc": os.environ.get("GLIBC_TUNABLES", "glibc defaults")}
    if with_torch:
        from scripts import bench_torch

        info.update(bench_torch.threads())
    return info


# ------------------------------------------------------------------------------- train


def bench_train(
    size,
    batch,
    seq,
    *,
    dtype="float32",
    remat="none",
    repeats=7,
    iters=3,
    torch_baseline=False,
    torch_compile=False,
    seed=0,
) -> dict:
    base = bj.model_config(size)
    cfg = bj.model_config(
        size, compute_dtype=dtype, remat_policy=remat, max_seq_len=max(seq, base.max_seq_len)
    )
    batch_np = bj.lm_batch(batch, seq, cfg.vocab_size, seed)
    peak, peak_src = bj.peak_flops()
    runners, first = {}, {}
    runners["jax"], first["jax"] = bj.jax_train_runner(cfg, batch_np, seed)
    if torch_baseline:
        from scripts import bench_torch

        name = "torch.compile" if torch_compile else "torch"
        runners[name], first[name] = bench_torch.torch_train_runner(
            cfg, batch_np, bj.BENCH_OPTIM, seed, compile_model=torch_compile
        )
    for run in runners.values():  # warm-up after the first call
        run()
    times = alternate(runners, repeats, iters)
    tokens = batch * seq
    flops_per_step = tokens * cfg.flops_per_token(seq)
    result = dict(
        kind="train",
        size=size,
        params=cfg.param_count(),
        batch=batch,
        seq=seq,
        dtype=dtype,
        remat=remat,
        peak_flops=peak,
        peak_source=peak_src,
        flops_per_token=cfg.flops_per_token(seq),
        repeats=repeats,
        iters=iters,
        **bj.device_summary(),
        **thread_info(torch_baseline),
        frameworks={},
    )
    for name, ts in times.items():
        step_s = statistics.median(ts)
        result["frameworks"][name] = dict(
            step_s=step_s,
            step_s_all=ts,
            tokens_per_s=tokens / step_s,
            mfu=flops_per_step / step_s / peak,
            first_call_s=first[name],
            # eager PyTorch compiles nothing: its first step is only warm-up
            compile_s=None if name == "torch" else first[name] - step_s,
        )
    for name in times:
        if name != "jax":
            result[f"jax_over_{name}"] = paired_ratio(times[name], times["jax"])
    bp.print_train(result)
    return emit(result)


# ------------------------------------------------------------------------------ sample


def bench_sample(
    size, batch, prompt_len, new_tokens, *, dtype="float32", repeats=5, hf_baseline=False, seed=0
) -> dict:
    if new_tokens < 2:
        raise SystemExit("bench: --new_tokens must be >= 2 (one step is the prefill reference)")
    base = bj.model_config(size)
    cfg = bj.model_config(
        size, compute_dtype=dtype, max_seq_len=max(prompt_len + new_tokens, base.max_seq_len)
    )
    params = bj.sampling_params(cfg, seed)
    prompts = bj.random_prompts(batch, prompt_len, cfg.vocab_size, seed)
    runners = {}
    runners["jax"], compile_s = bj.jax_generate_runner(cfg, params, prompts, new_tokens)
    prefill_run, _ = bj.jax_generate_runner(cfg, params, prompts, 1)
    runners["jax_prefill"] = prefill_run
    if hf_baseline:
        from scripts import bench_torch

        runners["hf"] = bench_torch.hf_generate_runner(cfg, prompts, new_tokens, seed)
    times = alternate(runners, repeats, 1)
    run_s, prefill_s = statistics.median(times["jax"]), statistics.median(times["jax_prefill"])
    step_s = (run_s - prefill_s) / (new_tokens - 1)
    param_bytes, kv_bytes = bj.bytes_per_decode_step(
        cfg, params, batch, prompt_len + new_tokens - 1
    )
    bandwidth, bw_src = bj.peak_bandwidth()
    roofline_s = (param_bytes + kv_bytes) / bandwidth
    measured_bw = None if bw_src.startswith("measured") else bj.measure_device_bandwidth()
    result = dict(
        kind="sample",
        size=size,
        params=cfg.param_count(),
        batch=batch,
        prompt_len=prompt_len,
        new_tokens=new_tokens,
        dtype=dtype,
        repeats=repeats,
        **bj.device_summary(),
        **thread_info(hf_baseline),
        compile_s=compile_s,
        generate_s=run_s,
        generate_s_all=times["jax"],
        prefill_s=prefill_s,
        tokens_per_s=batch * new_tokens / run_s,
        decode_step_s=step_s,
        param_bytes=param_bytes,
        kv_bytes=kv_bytes,
        bandwidth=bandwidth,
        bandwidth_source=bw_src,
        bandwidth_measured=measured_bw,
        roofline_step_s=roofline_s,
        roofline_fraction=roofline_s / step_s if step_s > 0 else float("nan"),
    )
    if hf_baseline:
        hf_s = statistics.median(times["hf"])
        result.update(
            hf_generate_s=hf_s,
            hf_generate_s_all=times["hf"],
            hf_tokens_per_s=batch * new_tokens / hf_s,
            jax_over_hf=paired_ratio(times["hf"], times["jax"]),
        )
    bp.print_sample(result)
    return emit(result)


# --------------------------------------------------------------------------------- ppo


def bench_ppo(
    size, batch, prompt_len, new_tokens, *, dtype="float32", repeats=3, trl=False, stop=True
):
    """PPO iteration split (scripts/bench_ppo.py), or None if train/ppo_phases.py is absent;
    trl: against TRL's PPOTrainer (fp32). stop=False: every reply runs to new_tokens."""
    try:
        from scripts import bench_ppo
    except ModuleNotFoundError as e:
        print(f"\n## PPO iteration: TODO — cannot import the PPO phases ({e}); nothing measured")
        return None
    if trl:
        return bench_ppo_trl(size, batch, prompt_len, new_tokens, repeats=repeats, stop=stop)
    return bench_ppo.bench_ppo(
        size, batch, prompt_len, new_tokens, dtype=dtype, repeats=repeats, stop=stop
    )


def bench_ppo_trl(size, batch, prompt_len, new_tokens, *, repeats=3, stop=True) -> dict:
    """jaxchat's PPO iteration and TRL's (scripts/bench_trl.py) on the same prompts, `repeats`
    alternating rounds after one warm-up iteration each; medians per phase and the paired
    ratios TRL s / jaxchat s."""
    from scripts import bench_ppo, bench_trl

    cfg, config, prompt = bench_ppo.settings(size, batch, prompt_len, new_tokens)
    runs, setup_s, first = {}, {}, {}
    start = time.perf_counter()
    runs["jaxchat"] = bench_ppo.jax_ppo_runner(cfg, config, prompt, stop=stop)
    setup_s["jaxchat"] = time.perf_counter() - start
    runs["trl"], setup_s["trl"] = bench_trl.trl_ppo_runner(cfg, config, prompt, stop=stop)
    for name, run in runs.items():  # jaxchat compiles here, TRL warms up
        start = time.perf_counter()
        run()
        first[name] = time.perf_counter() - start
    record = {name: [] for name in runs}
    runners = {name: (lambda name=name: record[name].append(runs[name]())) for name in runs}
    times = alternate(runners, repeats, 1)
    result = dict(
        bench_ppo.describe(size, cfg, config, prompt_len, "float32", repeats, stop),
        kind="ppo_trl",
        **bj.device_summary(),
        **thread_info(True),
        frameworks={},
        trl_over_jaxchat={"iteration": paired_ratio(times["trl"], times["jaxchat"])},
    )
    for name, rounds in record.items():
        phases = {k: [t[k] for t, _ in rounds] for k in rounds[0][0]}
        # the like-for-like sum (TRL's call also has "other": data, metrics, logging, gc)
        phases["phases"] = [t["rollout"] + t["score"] + t["update"] for t, _ in rounds]
        result["frameworks"][name] = dict(
            iteration_s=statistics.median(times[name]),
            iteration_s_all=times[name],
            phase_s={k: statistics.median(v) for k, v in phases.items()},
            phase_s_all=phases,
            first_iteration_s=first[name],
            setup_s=setup_s[name],
            mean_response_len=statistics.mean(length for _, length in rounds),
        )
    for k in ("rollout", "score", "update", "phases"):
        trl_s, jax_s = (result["frameworks"][n]["phase_s_all"][k] for n in ("trl", "jaxchat"))
        result["trl_over_jaxchat"][k] = paired_ratio(trl_s, jax_s)
    bench_ppo.print_vs_trl(result)
    return result


# ------------------------------------------------------------------------------ suites


def suite_cpu(args) -> list:
    """The CPU tables of docs/performance.md: tiny and 20m vs PyTorch, sampler vs HF, PPO."""
    results = []
    for size in ("tiny", "20m"):
        results.append(
            bench_train(
                size,
                args.batch or 8,
                args.seq or 256,
                repeats=args.repeats,
                iters=args.iters,
                torch_baseline=True,
            )
        )
    for size in ("tiny", "20m"):
        results.append(
            bench_sample(
                size,
                args.sample_batch,
                args.prompt_len,
                args.new_tokens,
                repeats=args.repeats,
                hf_baseline=True,
            )
        )
    # configs/ppo/tiny.py's rollout: 64 prompts x 48 new tokens
    results.append(emit(bench_ppo("tiny", 64, 48, 48, repeats=3)))
    return [r for r in results if r]


def suite_gpu(args) -> list:
    """~1B at seq 2048 in bf16 (MFU), decode at batch 1, 8, 64 and 256 (roofline), one PPO
    iteration split into its phases."""
    if args.smoke:  # the same code paths on CPU-sized shapes
        size, seq, batch, prompt_len, new_tokens, reps = "test", 32, 2, 8, 8, 2
        ppo = dict(size="test", batch=8, prompt_len=8, new_tokens=8, repeats=1)
    else:
        size, seq, batch, prompt_len, new_tokens, reps = "1b", 2048, args.batch or 16, 128, 256, 5
        ppo = dict(size=args.ppo_size, batch=32, prompt_len=64, new_tokens=128, repeats=2)
    remat = args.remat or "dots_no_batch"
    results = [
        bench_train(size, batch, seq, dtype="bfloat16", remat=remat, repeats=reps, iters=args.iters)
    ]
    for b in (1, 2) if args.smoke else (1, 8, 64, 256):  # latency-bound to compute-bound
        results.append(
            bench_sample(size, b, prompt_len, new_tokens, dtype="bfloat16", repeats=min(reps, 3))
        )
    if not args.skip_ppo:
        results.append(emit(bench_ppo(ppo.pop("size"), **ppo, dtype="bfloat16")))
    results = [r for r in results if r]
    bp.print_gpu_summary(results)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("train", "sample", "ppo", "profile", "cpu", "gpu"))
    ap.add_argument("--size", default="tiny", help="a key of configs.common.MODEL_SIZES")
    ap.add_argument("--batch", type=int, default=0, help="train batch (default 8; gpu 16)")
    ap.add_argument("--seq", type=int, default=0, help="train sequence length (default 256)")
    ap.add_argument("--dtype", default="float32", help="compute dtype: float32 | bfloat16")
    ap.add_argument("--remat", default="", help="remat policy (default: none; gpu: dots_no_batch)")
    ap.add_argument("--repeats", type=int, default=7, help="alternating timed repeats")
    ap.add_argument("--iters", type=int, default=3, help="train steps per timed repeat")
    ap.add_argument("--sample_batch", type=int, default=32)
    ap.add_argument("--prompt_len", type=int, default=32)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--torch", action="store_true", help="train: PyTorch baseline alongside")
    ap.add_argument("--torch_compile", action="store_true", help="train: torch.compile it")
    ap.add_argument("--hf", action="store_true", help="sample: HF generate baseline alongside")
    ap.add_argument("--trl", action="store_true", help="ppo: TRL's PPOTrainer alongside (fp32)")
    ap.add_argument("--no_stop", action="store_true", help="ppo: no stop token (full replies)")
    ap.add_argument("--smoke", action="store_true", help="gpu: tiny shapes (tests the paths)")
    ap.add_argument("--ppo_size", default="1b", help="gpu: model size of the PPO iteration")
    ap.add_argument("--skip_ppo", action="store_true", help="gpu: no PPO iteration")
    ap.add_argument("--json", default="", help="write the results (a list) to this file")
    args = ap.parse_args(argv)
    _SINK["path"] = args.json

    if args.what == "train":
        bench_train(
            args.size,
            args.batch or 8,
            args.seq or 256,
            dtype=args.dtype,
            remat=args.remat or "none",
            repeats=args.repeats,
            iters=args.iters,
            torch_baseline=args.torch or args.torch_compile,
            torch_compile=args.torch_compile,
        )
    elif args.what == "sample":
        bench_sample(
            args.size,
            args.sample_batch,
            args.prompt_len,
            args.new_tokens,
            dtype=args.dtype,
            repeats=args.repeats,
            hf_baseline=args.hf,
        )
    elif args.what == "ppo":
        emit(
            bench_ppo(
                args.size,
                args.sample_batch,
                args.prompt_len,
                args.new_tokens,
                dtype=args.dtype,
                # alone, at most 3 iterations; against TRL, --repeats alternating rounds
                repeats=args.repeats if args.trl else min(args.repeats, 3),
                trl=args.trl,
                stop=not args.no_stop,
            )
        )
    elif args.what == "profile":
        from scripts import bench_profile

        emit(
            bench_profile.profile(
                args.size,
                args.batch or 8,
                args.seq or 256,
                args.sample_batch,
                args.prompt_len,
                args.new_tokens,
            )
        )
    elif args.what == "cpu":
        suite_cpu(args)
    else:
        suite_gpu(args)


if __name__ == "__main__":
    main()

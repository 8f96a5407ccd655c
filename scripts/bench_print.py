"""Tables the benchmarks print (scripts/bench.py): one function per result kind."""

import sys

import jax


def print_table(title: str, rows: list[tuple]):
    width = max(len(str(k)) for k, _ in rows)
    print(f"\n## {title}")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    sys.stdout.flush()


def malloc_rows(res) -> list[tuple]:
    """The allocator setting both sides ran under (train.cli.reexec_with_child_env)."""
    return [("malloc (both sides)", res["malloc"])] if "malloc" in res else []


def print_train(res):
    rows = [
        (
            "model",
            f"{res['size']}: {res['params'] / 1e6:.2f}M params, {res['dtype']}, "
            f"remat {res['remat']}",
        ),
        ("batch x seq", f"{res['batch']} x {res['seq']}"),
        ("device", f"{res['device_kind']} x{res['devices']} ({res['platform']})"),
        ("peak", f"{res['peak_flops'] / 1e12:.3f} TFLOP/s ({res['peak_source']})"),
    ]
    for name, fw in res["frameworks"].items():
        first = (
            f"compile {fw['compile_s']:.1f} s"
            if fw["compile_s"] is not None
            else f"first step {fw['first_call_s']:.1f} s"
        )
        rows.append(
            (
                f"{name}: tokens/s",
                f"{fw['tokens_per_s']:,.0f}  (step {fw['step_s'] * 1e3:.1f} ms, "
                f"MFU {fw['mfu']:.1%}, {first})",
            )
        )
    if "torch_matmul_flops" in res:
        rows.append(
            (
                "threads",
                f"torch {res['torch_threads']} (OMP_WAIT_POLICY="
                f"{res['omp_wait_policy']}), XLA: all {res['host_cpus']} cores",
            )
        )
        rows.append(("1024² matmul torch", f"{res['torch_matmul_flops'] / 1e9:.1f} GFLOP/s"))
    for key in res:
        if key.startswith("jax_over_"):
            rows.append((f"tokens/s ratio jax/{key[9:]}", f"{res[key]:.2f}x"))
    rows += malloc_rows(res)
    print_table(f"train step ({res['repeats']} alternating repeats x {res['iters']} steps)", rows)


def print_sample(res):
    rows = [
        ("model", f"{res['size']}: {res['params'] / 1e6:.2f}M params, {res['dtype']}"),
        (
            "batch x prompt x new",
            f"{res['batch']} x {res['prompt_len']} x {res['new_tokens']} (greedy, no stop)",
        ),
        ("device", f"{res['device_kind']} x{res['devices']} ({res['platform']})"),
        (
            "jax: tokens/s",
            f"{res['tokens_per_s']:,.0f}  (generate {res['generate_s'] * 1e3:.1f}"
            f" ms, compile {res['compile_s']:.1f} s)",
        ),
        (
            "jax: prefill / decode step",
            f"{res['prefill_s'] * 1e3:.2f} ms / {res['decode_step_s'] * 1e3:.3f} ms",
        ),
        (
            "bytes/step params + KV",
            f"{res['param_bytes'] / 1e6:.2f} + {res['kv_bytes'] / 1e6:.2f} MB",
        ),
        (
            "bandwidth",
            f"{res['bandwidth'] / 1e9:.1f} GB/s ({res['bandwidth_source']})"
            + (
                f", copy measured {res['bandwidth_measured'] / 1e9:.0f} GB/s"
                if res["bandwidth_measured"]
                else ""
            ),
        ),
        (
            "roofline step / fraction",
            f"{res['roofline_step_s'] * 1e3:.3f} ms / {res['roofline_fraction']:.1%}",
        ),
    ]
    if "hf_tokens_per_s" in res:
        rows += [
            (
                "HF generate: tokens/s",
                f"{res['hf_tokens_per_s']:,.0f}  ({res['hf_generate_s'] * 1e3:.1f} ms)",
            ),
            ("tokens/s ratio jax/HF", f"{res['jax_over_hf']:.2f}x"),
        ]
    rows += malloc_rows(res)
    print_table(f"sampler ({res['repeats']} alternating repeats)", rows)


def print_gpu_summary(results):
    rows = []
    for r in results:
        if r["kind"] == "train":
            fw = r["frameworks"]["jax"]
            rows.append(
                (
                    f"train {r['size']} seq {r['seq']} bs {r['batch']} {r['dtype']} "
                    f"remat={r['remat']}",
                    f"MFU {fw['mfu']:.1%} (target >= 50%), {fw['tokens_per_s']:,.0f} "
                    f"tok/s, compile {fw['compile_s']:.0f} s",
                )
            )
        elif r["kind"] == "sample":
            rows.append(
                (
                    f"decode {r['size']} bs {r['batch']} {r['dtype']}",
                    f"roofline {r['roofline_fraction']:.1%} (target >= 60%), step "
                    f"{r['decode_step_s'] * 1e3:.2f} ms vs {r['roofline_step_s'] * 1e3:.2f}"
                    f" ms, {r['tokens_per_s']:,.0f} tok/s",
                )
            )
        else:
            rows.append(("ppo iteration", r.get("summary", "")))
    print_table(f"GPU summary: {jax.devices()[0].device_kind}, jax {jax.__version__}", rows)

"""Where the time goes: XLA op kinds of the train step and of `generate`, from a jax trace.

    python -m scripts.bench profile --size 20m --batch 4 --seq 256

Traces a few calls with jax.profiler, reads the trace back (jax.profiler.ProfileData) and sums
the host-thread time of every XLA op by kind (the fusion name without its numeric suffix:
"ynn_fusion" = matmuls through YNNPACK, "copy_bitcast_fusion" / "transpose_copy_fusion" =
layout copies, "wrapped_broadcast" = buffer fills, ...). CPU only: on GPU the ops run on the
device and this host-side view says little (use the GPU trace in TensorBoard/xprof instead).
"""

import collections
import glob
import re
import tempfile

import jax

from scripts import bench_jax as bj

_SKIP = ("Execute", "Await", "while", "end: ")


def op_kinds(run, calls: int = 3) -> collections.Counter:
    """Seconds per call of each XLA op kind (summed over threads) while `run()` is traced."""
    run()  # compiled and warm before tracing
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(calls):
                run()
        path = sorted(glob.glob(f"{d}/**/*.xplane.pb", recursive=True))[-1]
        data = jax.profiler.ProfileData.from_file(path)
        kinds = collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                if line.name == "python":
                    continue
                for ev in line.events:
                    if not any(ev.name.startswith(s) or s in ev.name for s in _SKIP):
                        kinds[re.sub(r"\.\d+$", "", ev.name)] += ev.duration_ns / 1e9 / calls
    return kinds


def print_kinds(title: str, kinds: collections.Counter, top: int = 10):
    total = sum(kinds.values())
    print(f"\n## {title}: XLA op time by kind (thread-summed {total * 1e3:.1f} ms per call)")
    for name, s in kinds.most_common(top):
        print(f"  {name:<42} {s * 1e3:9.2f} ms  {s / total:5.1%}")


def profile(
    size: str, batch: int, seq: int, sample_batch: int, prompt_len: int, new_tokens: int
) -> dict:
    base = bj.model_config(size)
    cfg = bj.model_config(size, max_seq_len=max(seq, prompt_len + new_tokens, base.max_seq_len))
    train_run, _ = bj.jax_train_runner(cfg, bj.lm_batch(batch, seq, cfg.vocab_size))
    train = op_kinds(train_run)
    print_kinds(f"train step {size} {batch}x{seq}", train)
    params = bj.sampling_params(cfg)
    prompts = bj.random_prompts(sample_batch, prompt_len, cfg.vocab_size)
    gen_run, _ = bj.jax_generate_runner(cfg, params, prompts, new_tokens)
    gen = op_kinds(gen_run)
    print_kinds(f"generate {size} {sample_batch}x{prompt_len}+{new_tokens}", gen)
    return dict(kind="profile", size=size, train_op_s=dict(train), generate_op_s=dict(gen))

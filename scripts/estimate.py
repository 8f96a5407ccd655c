"""Estimate a training run: parameters, FLOPs per token, memory per device, time and GPU-hours.

    python -m scripts.estimate --config configs/pretrain/tiny.py
    python -m scripts.estimate --size gpt3_175b --tokens 300e9 --accelerator V100 \\
        --mfu 0.2,0.3,0.5 --batch_size 1536 --mesh 4,32,8 --grad_accum 12 --remat_policy full \\
        --dtype float16

A config file gives the model, mesh, sequence length, batch, gradient accumulation and token
budget (train.steps · batch · seq_len); `--size NAME` (configs/common.py MODEL_SIZES) starts from
a named shape instead. Every other flag overrides either. The arithmetic and its assumptions are
in model/estimate.py; the output is a formula's answer, not a measurement.
"""

import dataclasses
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from configs.common import MODEL_SIZES, model_config
from model import estimate
from model.config import DTYPES, REMAT_POLICIES, ModelConfig
from model.sharding import MESH_AXES, make_rules, mesh_shape
from train import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment file", lock_config=True)
_SIZE = flags.DEFINE_enum("size", None, list(MODEL_SIZES), "named model size (instead of config)")
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "sequence length (default: config / max_seq_len)")
_BATCH = flags.DEFINE_integer("batch_size", None, "global batch in sequences")
_ACCUM = flags.DEFINE_integer("grad_accum", None, "gradient accumulation microbatches")
_MESH = flags.DEFINE_list("mesh", None, "data,fsdp,tensor sizes (one may be -1 with --devices)")
_DEVICES = flags.DEFINE_integer("devices", None, "devices for a -1 mesh axis (default: local)")
_TOKENS = flags.DEFINE_float("tokens", None, "token budget (default: config steps, or 20·N)")
_ACCEL = flags.DEFINE_list("accelerator", list(estimate.ACCELERATORS), "accelerator names")
_MFU = flags.DEFINE_list("mfu", ["0.4"], "model FLOPs utilisations to tabulate")
_REMAT = flags.DEFINE_enum("remat_policy", None, list(REMAT_POLICIES), "override remat policy")
_DTYPE = flags.DEFINE_enum("dtype", None, list(DTYPES), "override compute dtype")
_FLASH = flags.DEFINE_bool("flash", False, "fused attention: no materialised attention scores")

GIB = 2**30


@dataclasses.dataclass
class Run:
    cfg: ModelConfig
    mesh: dict
    rules: tuple
    seq_len: int
    batch: int
    grad_accum: int
    tokens: float
    tokens_note: str


def _lookup(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if part not in node:
            raise ValueError(f"--config has no key {dotted!r} (needed for the estimate)")
        node = node[part]
    return node


def _from_config(config) -> Run:
    cfg = ModelConfig.from_config(_lookup(config, "model"))
    mesh = {a: int(_lookup(config, f"mesh.{a}")) for a in MESH_AXES}
    rules = make_rules(dict(config.mesh.get("rules", {})))
    seq_len, batch = int(_lookup(config, "data.seq_len")), int(_lookup(config, "data.batch_size"))
    accum, steps = int(_lookup(config, "optim.grad_accum")), int(_lookup(config, "train.steps"))
    return Run(cfg, mesh, rules, seq_len, batch, accum, float(steps * batch * seq_len),
               f"train.steps={steps} x batch x seq_len")


def _from_size(size: str) -> Run:
    cfg = ModelConfig.from_config(model_config(size))
    n = cfg.param_count()
    return Run(cfg, dict(data=1, fsdp=1, tensor=1), make_rules(), cfg.max_seq_len, 0, 1,
               20.0 * n, "20 tokens per parameter (Chinchilla)")


def resolve_run() -> Run:
    """The config or size, then every flag given on the command line on top."""
    if (_CONFIG.value is None) == (_SIZE.value is None):
        raise ValueError("give exactly one of --config FILE or --size NAME")
    run = _from_config(_CONFIG.value) if _CONFIG.value is not None else _from_size(_SIZE.value)
    changes = {k: v for k, v in (("remat_policy", _REMAT.value), ("compute_dtype", _DTYPE.value))
               if v is not None}
    run.cfg = dataclasses.replace(run.cfg, **changes)
    if _MESH.value is not None:
        if len(_MESH.value) != 3:
            raise ValueError(f"--mesh={','.join(_MESH.value)}: want data,fsdp,tensor")
        run.mesh = dict(zip(MESH_AXES, (int(s) for s in _MESH.value), strict=True))
    if -1 in run.mesh.values():  # as a run would: the remaining devices (default: this host's)
        devices = _DEVICES.value or jax.device_count()
        run.mesh = dict(zip(MESH_AXES, mesh_shape(run.mesh, devices), strict=True))
    run.seq_len = _SEQ_LEN.value or run.seq_len
    run.grad_accum = _ACCUM.value or run.grad_accum
    run.batch = _BATCH.value or run.batch or run.mesh["data"] * run.mesh["fsdp"] * run.grad_accum
    if _TOKENS.value is not None:
        run.tokens, run.tokens_note = _TOKENS.value, "--tokens"
    return run


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _num(x: float) -> str:
    """Thousands separators for big numbers, three significant digits for small ones."""
    return f"{x:,.0f}" if x >= 1e4 else f"{x:,.1f}" if x >= 10 else f"{x:.3g}"


def report(run: Run, accelerators: list, mfus: list[float], flash: bool) -> str:
    cfg, mesh = run.cfg, run.mesh
    devices = mesh["data"] * mesh["fsdp"] * mesh["tensor"]
    n, fpt = cfg.param_count(), cfg.flops_per_token(run.seq_len)
    attn = fpt - 6 * (n - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model))
    total = estimate.training_flops(cfg, run.tokens, run.seq_len)
    mem = estimate.memory_per_device(cfg, seq_len=run.seq_len, global_batch=run.batch,
                                     mesh_sizes=mesh, rules=run.rules,
                                     grad_accum=run.grad_accum, flash=flash)
    micro = run.batch // (run.grad_accum * mesh["data"] * mesh["fsdp"])
    lines = [
        f"model        {_si(n)} parameters ({n:,}); d_model {cfg.d_model}, {cfg.n_layers} layers, "
        f"{cfg.n_heads}/{cfg.n_kv_heads} q/kv heads, d_ff {cfg.d_ff}, vocab {cfg.vocab_size}",
        f"batch        {run.batch} x {run.seq_len} tokens = {_si(run.batch * run.seq_len)} "
        f"tokens/step; grad_accum {run.grad_accum}; {micro} sequences per device per microbatch",
        f"mesh         data={mesh['data']} fsdp={mesh['fsdp']} tensor={mesh['tensor']} "
        f"({devices} devices)",
        f"FLOPs/token  {fpt:.4g} = 6N {fpt - attn:.4g} + attention {attn:.4g} (causal)",
        f"budget       {_si(run.tokens)} tokens ({run.tokens_note}) -> {total:.3g} FLOPs",
        "",
        f"memory per device (GiB), remat={cfg.remat_policy}, compute {cfg.compute_dtype}"
        + (", flash attention" if flash else ""),
    ]
    names = dict(params="params (fp32)", grads="grads (fp32)" + (
        " + accumulator" if run.grad_accum > 1 else ""), optimizer="AdamW moments (2 x fp32)",
        activations="activations", total="total")
    lines += [f"  {names[k]:<28} {v / GIB:10.2f}" for k, v in mem.items()]
    lines += ["", f"time for {_si(run.tokens)} tokens "
              "(arithmetic: tokens x FLOPs/token / (peak x MFU); not a measurement)",
              f"  {'accelerator':<12} {'peak TFLOP/s':>12} {'MFU':>5} {'GPU-hours':>12} "
              f"{'days on ' + str(devices):>14} {'fits HBM':>9}"]
    for acc in accelerators:
        fits = "yes" if mem["total"] <= acc.hbm_gib * GIB else f"no ({acc.hbm_gib:g})"
        for mfu in mfus:
            hours = estimate.gpu_hours(total, acc.peak_flops, mfu)
            lines.append(f"  {acc.name:<12} {acc.peak_flops / 1e12:12.0f} {mfu:5.2f} "
                         f"{_num(hours):>12} {_num(hours / devices / 24):>14} {fits:>9}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # no backend-probing chatter around the table
    try:
        accelerators = [estimate.accelerator(a) for a in _ACCEL.value]
        mfus = [float(m) for m in _MFU.value]
        print(report(resolve_run(), accelerators, mfus, _FLASH.value))
    except ValueError as e:  # one line, not the flag help
        sys.exit(f"scripts/estimate.py: error: {e}")


if __name__ == "__main__":
    cli.run(main)

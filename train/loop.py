"""fit(): the one training loop every supervised stage shares.

Dispatch step n+1 before reading step n's metrics (the host never waits on the device except
at log/eval/checkpoint points), evaluate, checkpoint, stop on NaN/Inf with the step named and
the last good checkpoint kept, save and exit cleanly on SIGTERM/SIGINT, resume exactly.

A step's loss is computed BEFORE its update, so a finite loss does not make the saved
parameters finite: Checkpoints.save checks the state itself. The run folder's config.json and
run_info.json are written only once the checkpoint has been restored (or there is none), so a
refused resume leaves the folder as it was. A run resumed after its last step evaluates again,
so its summary never reads an empty evaluation.
"""

import contextlib
import dataclasses
import math
import signal
import time

import jax
import numpy as np
from tqdm import tqdm

from train import compile_cache, distributed
from train.checkpoint import Checkpoints, NonFiniteState, abstract_like
from train.metrics import MetricsWriter, write_run_info


class NonFiniteLoss(RuntimeError):
    pass


def close_all(*closers):
    """Calls every closer even when one fails (a full disk fails them all), then raises the
    first failure: an unclosed writer would fail again, noisily, at interpreter exit."""
    first = None
    for close in closers:
        try:
            close()
        except Exception as e:  # noqa: BLE001 - re-raised below
            first = first or e
    if first is not None:
        raise first


def save_finite(ckpt, step, state, data_state, extras, what="step"):
    """ckpt.save, with a refused non-finite state reported as the run's NaN stop."""
    try:
        ckpt.save(step, state, data_state, extras, force=True)
    except NonFiniteState:
        raise NonFiniteLoss(
            f"the parameters are NaN/Inf after {what} {step} (its loss, computed before the "
            f"update, was finite); stopping without saving them: {ckpt.last_good()}"
        ) from None


@dataclasses.dataclass
class FitResult:
    state: object
    step: int
    interrupted: bool
    extras: dict
    last_eval: dict


@dataclasses.dataclass
class Hooks:
    """What differs between stages besides the loss: evaluation, samples, extras to checkpoint."""

    eval_fn: object = None  # params -> dict of scalars
    sample_fn: object = None  # (params, step) -> str, appended to samples.txt
    extras: dict = dataclasses.field(default_factory=dict)
    final_extras_fn: object = None  # params -> dict merged into extras before the last save
    tokens_per_step: int = 0
    flops_per_step: float = 0.0
    peak_flops: float = 0.0


@contextlib.contextmanager
def _stop_on_signals(flag: dict):
    def handler(signum, _frame):
        flag["signal"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def fit(*, workdir, cfg, state, state_sh, step_fn, data_iter, hooks: Hooks,
        run_config=None) -> FitResult:
    """Trains until cfg.steps (resuming from the newest checkpoint in workdir/ckpt).
    run_config: written to workdir/config.json once the resume has been accepted."""
    ckpt = Checkpoints(f"{workdir}/ckpt", keep=cfg.keep_ckpts, async_save=cfg.async_checkpoint)
    try:
        state, extras = _maybe_resume(ckpt, state, state_sh, data_iter, hooks.extras)
    except BaseException:
        ckpt.close()
        raise
    if run_config is not None:
        write_run_info(workdir, run_config)
    writer = MetricsWriter(workdir)
    start, flag, last_eval = int(state.step), {}, {}
    bar = tqdm(total=cfg.steps, initial=start, dynamic_ncols=True, mininterval=1.0)
    timer = _Throughput(hooks)
    pending = None
    try:
        with _stop_on_signals(flag):
            for step in range(start + 1, cfg.steps + 1):
                state, metrics = step_fn(state, next(data_iter))
                if pending is not None:  # read step n-1 while step n runs
                    _report(pending, writer, bar, timer, cfg, ckpt)
                pending = (step, metrics)
                last = step == cfg.steps
                if step % cfg.ckpt_every == 0 or last or flag:
                    _report(pending, writer, bar, timer, cfg, ckpt, force=True)
                    pending = None
                    if last and hooks.final_extras_fn:
                        extras.update(hooks.final_extras_fn(state.params))
                    save_finite(ckpt, step, state, data_iter.get_state(), extras)
                if hooks.eval_fn and (step % cfg.eval_every == 0 or last):
                    last_eval = _run_eval(hooks.eval_fn, state, step, writer)
                if hooks.sample_fn and cfg.sample_every and (step % cfg.sample_every == 0 or last):
                    _write_samples(workdir, hooks.sample_fn(state.params, step))
                if flag:
                    bar.write(f"signal {flag['signal']}: checkpoint saved at step {step}, stopping")
                    break
            if pending is not None:
                _report(pending, writer, bar, timer, cfg, ckpt, force=True)
        if hooks.eval_fn and not last_eval and int(state.step) >= cfg.steps:
            last_eval = {k: float(v) for k, v in hooks.eval_fn(state.params).items()}
    finally:
        close_all(bar.close, ckpt.close, writer.close)
    return FitResult(state, int(state.step), bool(flag), extras, last_eval)


def _maybe_resume(ckpt, state, state_sh, data_iter, extras):
    restored = ckpt.restore_latest(abstract_like(state, state_sh))
    if restored is None:
        return state, dict(extras)
    step, state, data_state, saved_extras = restored
    if data_state:
        data_iter.set_state(data_state)
    print(f"resumed from {ckpt.directory} at step {step}")
    return state, {**extras, **(saved_extras or {})}


class _Throughput:
    def __init__(self, hooks):
        self.hooks, self.t, self.steps = hooks, time.perf_counter(), 0

    def tick(self):
        self.steps += 1

    def rates(self):
        now = time.perf_counter()
        dt, n = now - self.t, self.steps
        self.t, self.steps = now, 0
        if n == 0 or dt <= 0:
            return {}
        out = {"tokens_per_s": self.hooks.tokens_per_step * n / dt, "step_s": dt / n}
        if self.hooks.peak_flops:
            out["mfu"] = self.hooks.flops_per_step * n / dt / self.hooks.peak_flops
        return out


def _report(pending, writer, bar, timer, cfg, ckpt, force=False):
    step, metrics = pending
    timer.tick()
    bar.update(1)
    values = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
    compile_cache.mark_first_step()
    if not math.isfinite(values.get("loss", 0.0)):  # every step: the fetch overlaps step n+1
        raise NonFiniteLoss(
            f"loss is {values['loss']} at step {step}; stopping: {ckpt.last_good()}")
    if not (force or step % cfg.log_every == 0 or step == 1):
        return
    values.update(timer.rates())
    writer.write(step, values)
    shown = {k: values[k] for k in ("loss", "accuracy", "tokens_per_s", "mfu") if k in values}
    bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)


def _run_eval(eval_fn, state, step, writer):
    values = {k: float(v) for k, v in eval_fn(state.params).items()}
    writer.write(step, values, prefix="eval")
    tqdm.write(f"step {step} eval " + " ".join(f"{k}={v:.4g}" for k, v in values.items()))
    return values


def _write_samples(workdir, text):
    if not distributed.is_primary():
        return
    with open(f"{workdir}/samples.txt", "a") as f:
        f.write(text.rstrip() + "\n\n")

"""A sweep's results: W/results.csv (every trial, every swept value and scalar metric),
W/results.md (the table, seed means with 95% intervals, the best trial per metric) and
W/plots/<metric>_vs_<key>.png (each metric against each swept value, seeds averaged).

A trial's metrics are the scalar leaves of its summary.json files, dotted: a stage run's
`summary.json`; for a pipeline, `evaluate.*` (evaluate/summary.json), `ppo.*`, `reward.*`
and `sft.*` from those stages' summaries. Seed intervals are Student-t: mean ± t(0.975, n−1)
· sd / √n over the trials that differ only in the seed.
"""

import csv
import io
import json
import math
import os

import numpy as np

from train import fingerprint as fp
from train.metrics import atomic_write
from train.sweeps.runner import status, trial_dir
from train.sweeps.trials import Sweep

PIPELINE_SUMMARIES = {"evaluate": "evaluate/summary.json", "ppo": "ppo/summary.json",
                      "reward": "reward/summary.json", "sft": "sft/summary.json"}


def _scalars(tree: dict, prefix: str = "") -> dict:
    return {f"{prefix}{k}": float(v) for k, v in fp.flatten(tree).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def run_metrics(folder: str, kind: str) -> dict:
    run = os.path.join(folder, "run")
    files = ({name: os.path.join(run, path) for name, path in PIPELINE_SUMMARIES.items()}
             if kind == "pipeline" else {"": os.path.join(run, "summary.json")})
    out = {}
    for name, path in files.items():
        if os.path.exists(path):
            with open(path) as f:
                out.update(_scalars(json.load(f), f"{name}." if name else ""))
    return out


def collect(sweep: Sweep, workdir: str) -> list[dict]:
    """One row per trial: name, status, the swept values, wall_s and the metrics."""
    rows = []
    for trial in sweep.trials:
        folder = trial_dir(workdir, trial)
        row = {"trial": trial.name, "status": status(folder), **trial.overrides}
        if row["status"] == "done":
            with open(os.path.join(folder, "result.json")) as f:
                row["wall_s"] = json.load(f)["wall_s"]
            row.update(run_metrics(folder, sweep.kind))
        rows.append(row)
    return rows


def t_interval(values) -> tuple[float, float, float]:
    """(mean, lo, hi): the 95% Student-t interval of the mean (lo = hi = mean for one value)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def headline(sweep: Sweep, rows: list[dict], limit: int = 6) -> dict:
    """{metric: "max" | "min"}: the sweep file's METRICS, else the first few metrics found."""
    if sweep.metrics:
        return sweep.metrics
    fixed = {*_fixed_columns(sweep), "wall_s"}
    found = [k for r in rows for k in r if k not in fixed]
    names = list(dict.fromkeys(found))[:limit]
    return {m: ("min" if "loss" in m else "max") for m in names}


def _fixed_columns(sweep: Sweep) -> list[str]:
    return ["trial", "status", *dict.fromkeys(k for t in sweep.trials for k in t.overrides)]


def seed_groups(sweep: Sweep, rows: list[dict]) -> dict:
    """{(swept values except the seed): [finished rows]}."""
    keys = [k for k in _fixed_columns(sweep)[2:] if k != sweep.seed_key]
    groups = {}
    for row in rows:
        if row["status"] == "done":
            groups.setdefault(tuple((k, row.get(k)) for k in keys), []).append(row)
    return groups


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def markdown(sweep: Sweep, rows: list[dict]) -> str:
    metrics = headline(sweep, rows)
    swept = _fixed_columns(sweep)[2:]
    cols = ["trial", "status", *swept, *metrics]  # wall times: results.csv
    done = sum(r["status"] == "done" for r in rows)
    lines = [f"# Sweep {sweep.spec}", "", f"{done} of {len(rows)} trials finished.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    groups = seed_groups(sweep, rows)
    if sweep.seed_key in swept and groups:
        lines += ["", f"## Seed means (95% t-interval over {sweep.seed_key})", "",
                  "| " + " | ".join([*(k for k in swept if k != sweep.seed_key), "seeds",
                                     *metrics]) + " |",
                  "|" + "---|" * (len(swept) + len(metrics))]
        for key, members in groups.items():
            cells = [_fmt(v) for _, v in key] + [str(len(members))]
            for m in metrics:
                vals = [r[m] for r in members if m in r]
                cells.append("{:.4g} [{:.4g}, {:.4g}]".format(*t_interval(vals)) if vals else "")
            lines.append("| " + " | ".join(cells) + " |")
    best = best_trials(rows, metrics)
    if best:
        lines += ["", "## Best trial per metric", ""]
        lines += [f"- {m} ({d}): {name} = {_fmt(v)}" for m, (d, name, v) in best.items()]
    return "\n".join(lines) + "\n"


def best_trials(rows, metrics: dict) -> dict:
    """{metric: (direction, trial, value)} over the finished trials that have it."""
    out = {}
    for m, direction in metrics.items():
        have = [r for r in rows if r["status"] == "done" and m in r]
        if have:
            pick = (max if direction == "max" else min)(have, key=lambda r: r[m])
            out[m] = (direction, pick["trial"], pick[m])
    return out


def to_csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def plot(sweep: Sweep, rows: list[dict], out_dir: str) -> list[str]:
    """metric vs swept value (numeric keys other than the seed), seed means ± interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [k for k in _fixed_columns(sweep)[2:] if k != sweep.seed_key]
    numeric = [k for k in swept if all(isinstance(r.get(k), int | float) for r in rows)]
    paths, metrics = [], headline(sweep, rows)
    for key in numeric:
        for m in metrics:
            points = {}
            for r in rows:
                if r["status"] == "done" and m in r:
                    others = tuple((k, r.get(k)) for k in swept if k != key)
                    points.setdefault(others, {}).setdefault(r[key], []).append(r[m])
            if not points:
                continue
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
            for others, by_value in points.items():
                xs = sorted(by_value)
                stats = [t_interval(by_value[x]) for x in xs]
                mean = np.array([s[0] for s in stats])
                err = np.array([[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]])
                label = ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in others) or None
                ax.errorbar(xs, mean, yerr=err, marker="o", capsize=3, label=label)
            ax.set_xlabel(key)
            ax.set_ylabel(m)
            if len(points) > 1:
                ax.legend(fontsize=7)
            fig.tight_layout()
            path = os.path.join(out_dir, f"{m}_vs_{key}.png".replace("/", "_"))
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def write(sweep: Sweep, workdir: str) -> list[dict]:
    """results.csv, results.md and the plots, from whatever has finished so far."""
    rows = collect(sweep, workdir)
    atomic_write(os.path.join(workdir, "results.csv"), to_csv(rows))
    text = markdown(sweep, rows)
    if callable(getattr(sweep.module, "analyse", None)):  # the sweep file's own analysis
        text += "\n" + sweep.module.analyse(workdir, rows)
    atomic_write(os.path.join(workdir, "results.md"), text)
    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    plot(sweep, rows, os.path.join(workdir, "plots"))
    return rows

"""Gao, Schulman & Hilton 2022 ("Scaling Laws for Reward Model Overoptimization"): gold and
proxy reward against d = √KL(π ‖ π_init), and their functional forms

    best-of-n   R_bon(d) = d (α_bon − β_bon · d)
    RL          R_RL(d)  = d (α_RL − β_RL · log d)

where R is the gold score's gain over the initial policy. Both are linear in (α, β), so the fit
is ordinary least squares through the origin; the intervals are the usual 95% Student-t ones
(σ² = RSS / (n − 2)). The gold peak is at d* = α / (2β) (best-of-n) and d* = exp(α/β − 1) (RL).

Points come from a pipeline's PPO summary: `best_of_n` (n, analytic KL log n − (n−1)/n, gold
and RM means over the same prompts) and `eval_points` (held-out gold, RM score and KL along
PPO training; iteration 0 is the SFT policy).
"""

import dataclasses
import math
import os

import numpy as np

FORMS = {  # columns of the design matrix: R = α·x1 − β·x2
    "bon": lambda d: (d, d * d),
    "rl": lambda d: (d, np.where(d > 0, d * np.log(np.maximum(d, 1e-12)), 0.0)),
}


@dataclasses.dataclass(frozen=True)
class Fit:
    form: str
    alpha: float
    beta: float
    alpha_ci: tuple
    beta_ci: tuple
    n: int

    def __call__(self, d):
        x1, x2 = FORMS[self.form](np.asarray(d, dtype=float))
        return self.alpha * x1 - self.beta * x2

    @property
    def peak_d(self) -> float:
        """Where the fitted gold peaks (inf when it never turns down: β ≤ 0)."""
        if self.beta <= 0:
            return math.inf
        return self.alpha / (2 * self.beta) if self.form == "bon" else math.exp(
            self.alpha / self.beta - 1)


def fit(form: str, d, r) -> Fit:
    """Least squares of R(d) (the form's α, β) with 95% intervals; needs ≥ 3 points."""
    from scipy import stats

    d, r = np.asarray(d, dtype=float), np.asarray(r, dtype=float)
    if len(d) < 3:
        raise ValueError(f"fitting R_{form}: {len(d)} points, at least 3 are needed")
    x1, x2 = FORMS[form](d)
    design = np.stack([x1, -x2], axis=1)
    theta, *_ = np.linalg.lstsq(design, r, rcond=None)
    resid = r - design @ theta
    dof = max(len(d) - 2, 1)
    cov = (resid @ resid / dof) * np.linalg.pinv(design.T @ design)
    half = stats.t.ppf(0.975, dof) * np.sqrt(np.maximum(np.diag(cov), 0.0))
    (a, b), (ha, hb) = theta, half
    return Fit(form, float(a), float(b), (float(a - ha), float(a + ha)),
               (float(b - hb), float(b + hb)), len(d))


def bon_points(summary: dict) -> dict:
    """{d, gold, proxy}: best-of-n gains over n = 1 (the sampling policy itself)."""
    rows = sorted(summary["best_of_n"], key=lambda r: r["n"])
    g0, p0 = rows[0]["gold_mean"], rows[0]["rm_mean"]
    return {"d": [math.sqrt(max(r["kl"], 0.0)) for r in rows],
            "gold": [r["gold_mean"] - g0 for r in rows],
            "proxy": [r["rm_mean"] - p0 for r in rows], "n": [r["n"] for r in rows]}


def rl_points(summary: dict) -> dict:
    """{d, gold, proxy}: PPO's held-out gains over iteration 0 along training. A KL estimate
    below zero (sampling noise near the start) counts as 0."""
    rows = sorted(summary["eval_points"], key=lambda r: r["iteration"])
    g0, p0 = rows[0]["gold"], rows[0]["rm_score"]
    return {"d": [math.sqrt(max(r["kl"], 0.0)) for r in rows],
            "gold": [r["gold"] - g0 for r in rows],
            "proxy": [r["rm_score"] - p0 for r in rows],
            "iteration": [r["iteration"] for r in rows]}


def _safe_fit(form, points):
    try:
        return fit(form, points["d"], points["gold"])
    except (ValueError, np.linalg.LinAlgError):
        return None


def _cell(f: Fit | None, which: str) -> str:
    if f is None:
        return "–"
    value, (lo, hi) = getattr(f, which), getattr(f, f"{which}_ci")
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def report(runs: list[dict], figure: str) -> str:
    """runs: [{pairs, kl_coef, accuracy, ppo: PPO summary}] → markdown (fits table, peaks)
    and the figure (gold solid, proxy dashed, fitted forms dotted; one colour per RM)."""
    if not runs:
        return ""
    runs = sorted(runs, key=lambda r: (r["kl_coef"] != 0.2, r["pairs"]))
    lines = ["## Reward model over-optimisation (Gao et al. 2022)", "",
             f"![gold and proxy against √KL]({os.path.basename(figure)})", "",
             "| RM pairs | β (PPO) | RM gold acc. | α_bon | β_bon | d*_bon | α_RL | β_RL | "
             "d*_RL | best-of-n gold peak | PPO gold at end |", "|" + "---|" * 11]
    fits = []
    for r in runs:
        bon, rl = bon_points(r["ppo"]), rl_points(r["ppo"])
        fb, fr = _safe_fit("bon", bon), _safe_fit("rl", rl)
        fits.append((r, bon, rl, fb, fr))
        peak = max(range(len(bon["gold"])), key=lambda i: bon["gold"][i])
        acc = "–" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lines.append(
            f"| {r['pairs']} | {r['kl_coef']:g} | {acc} | {_cell(fb, 'alpha')} | "
            f"{_cell(fb, 'beta')} | {_peak(fb)} | {_cell(fr, 'alpha')} | {_cell(fr, 'beta')} | "
            f"{_peak(fr)} | {bon['gold'][peak]:+.3f} at n={bon['n'][peak]} (d={bon['d'][peak]:.2f})"
            f" | {rl['gold'][-1]:+.3f} at d={rl['d'][-1]:.2f} |")
    lines += ["", "Gold and proxy are gains over the initial (SFT) policy: best-of-n over n = 1, "
              "PPO over iteration 0. Intervals: 95% Student-t of the least-squares fit; d*: "
              "where the fitted gold peaks (∞: it has not turned down)."]
    _figure(fits, figure)
    return "\n".join(lines) + "\n"


def _peak(f: Fit | None) -> str:
    return "–" if f is None else ("∞" if math.isinf(f.peak_d) else f"{f.peak_d:.2f}")


def _figure(fits, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    proxies = [ax.twinx() for ax in axes]  # the RM's units are not gold's
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(fits)))
    for (r, bon, rl, fb, fr), colour in zip(fits, colours, strict=True):
        label = f"{r['pairs']} pairs" + ("" if r["kl_coef"] == 0.2 else f", β={r['kl_coef']:g}")
        for ax, proxy, pts, f in ((axes[0], proxies[0], bon, fb), (axes[1], proxies[1], rl, fr)):
            ax.plot(pts["d"], pts["gold"], "o-", color=colour, label=label, ms=3)
            proxy.plot(pts["d"], pts["proxy"], "--", color=colour, alpha=0.5)
            if f is not None:
                grid = np.linspace(0, max(pts["d"]) or 1, 100)
                ax.plot(grid, f(grid), ":", color=colour)
    for ax, title in zip(axes, ("best-of-n", "PPO"), strict=True):
        ax.set_xlabel("d = √KL (nats^½)")
        ax.set_title(f"{title}: gold (solid, fit dotted), proxy RM (dashed)")
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].set_ylabel("gold gain over the initial policy")
    proxies[1].set_ylabel("proxy (RM) gain, dashed")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Gao et al.'s functional forms: the least-squares fits recover known α, β (and their
intervals cover them), the peaks are where the fitted curves are highest, and the points are
read from a PPO summary as gains over the initial policy."""

import math

import numpy as np
import pytest

from train import overoptimisation as oo


@pytest.mark.parametrize("form, alpha, beta", [("bon", 0.30, 0.08), ("rl", 0.20, 0.12)])
def test_fits_recover_known_coefficients(form, alpha, beta):
    d = np.linspace(0.05, 3.0, 25)
    truth = oo.Fit(form, alpha, beta, (0, 0), (0, 0), 0)
    exact = oo.fit(form, d, truth(d))
    assert exact.alpha == pytest.approx(alpha, abs=1e-9)
    assert exact.beta == pytest.approx(beta, abs=1e-9)
    covered = 0
    for seed in range(40):  # noisy: the 95% intervals cover the truth about 95% of the time
        noisy = oo.fit(form, d, truth(d) + np.random.default_rng(seed).normal(0, 0.01, d.size))
        assert noisy.alpha == pytest.approx(alpha, abs=0.03)
        covered += noisy.alpha_ci[0] <= alpha <= noisy.alpha_ci[1] and \
            noisy.beta_ci[0] <= beta <= noisy.beta_ci[1]
    assert covered >= 32


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_the_peak_is_where_the_fitted_gold_is_highest(form):
    f = oo.Fit(form, 0.3, 0.1, (0, 0), (0, 0), 0)
    grid = np.linspace(1e-3, 20, 200001)
    assert f.peak_d == pytest.approx(grid[np.argmax(f(grid))], abs=1e-3)
    assert oo.Fit(form, 0.3, -0.1, (0, 0), (0, 0), 0).peak_d == math.inf


def test_too_few_points_are_refused():
    with pytest.raises(ValueError, match="2 points, at least 3"):
        oo.fit("bon", [0.1, 0.2], [0.0, 0.1])


def test_points_are_gains_over_the_initial_policy():
    summary = {"best_of_n": [{"n": 4, "kl": math.log(4) - 0.75, "gold_mean": 0.5, "rm_mean": 2},
                             {"n": 1, "kl": 0.0, "gold_mean": 0.2, "rm_mean": 1}],
               "eval_points": [{"iteration": 0, "kl": 0.0, "gold": 0.1, "rm_score": -1},
                               {"iteration": 5, "kl": -0.01, "gold": 0.15, "rm_score": 0},
                               {"iteration": 10, "kl": 1.0, "gold": 0.3, "rm_score": 2}]}
    bon, rl = oo.bon_points(summary), oo.rl_points(summary)
    assert bon["n"] == [1, 4] and bon["gold"] == pytest.approx([0, 0.3])
    assert bon["d"] == pytest.approx([0, math.sqrt(math.log(4) - 0.75)])
    assert rl["d"] == pytest.approx([0, 0, 1]) and rl["proxy"] == pytest.approx([0, 1, 3])


def fake_summary(alpha_bon, beta_bon, alpha_rl, beta_rl, g0=0.2):
    bon = oo.Fit("bon", alpha_bon, beta_bon, (0, 0), (0, 0), 0)
    rl = oo.Fit("rl", alpha_rl, beta_rl, (0, 0), (0, 0), 0)
    ns = [1, 2, 4, 8, 16, 32, 64]
    kls = [math.log(n) - (n - 1) / n for n in ns]
    return {"best_of_n": [{"n": n, "kl": k, "gold_mean": g0 + float(bon(math.sqrt(k))),
                           "rm_mean": math.sqrt(k)} for n, k in zip(ns, kls)],
            "eval_points": [{"iteration": 5 * i, "kl": (0.2 * i) ** 2,
                             "gold": g0 + float(rl(0.2 * i)), "rm_score": 0.5 * i}
                            for i in range(12)]}


def test_the_reproduction_table_reports_the_fitted_forms(tmp_path):
    """configs/sweeps/overoptimisation.py's analysis on trial folders holding summaries made
    from known α, β: the table shows them and the figure is drawn."""
    import json

    from configs.sweeps import overoptimisation as sweep_file

    rows = []
    for i, pairs in enumerate((250, 1000)):
        run = tmp_path / "trials" / f"t{i}" / "run"
        (run / "ppo").mkdir(parents=True)
        (run / "reward").mkdir()
        (run / "ppo" / "summary.json").write_text(json.dumps(
            fake_summary(0.3 + 0.1 * i, 0.1, 0.2, 0.05 + 0.05 * i)))
        (run / "reward" / "summary.json").write_text(json.dumps(
            {"train_pairs": pairs, "heldout_accuracy_gold": 0.6 + 0.1 * i}))
        rows.append({"trial": f"t{i}", "status": "done", "ppo.kl.coef": 0.2})
    text = sweep_file.analyse(str(tmp_path), rows)
    assert "| 250 | 0.2 | 0.600 | 0.300 [0.300, 0.300] | 0.100 [0.100, 0.100] | 1.50 |" in text
    assert "| 1000 | 0.2 | 0.700 | 0.400 [0.400, 0.400] |" in text
    assert "0.200 [0.200, 0.200] | 0.100 [0.100, 0.100] | 2.72 |" in text  # e^(2-1)
    assert (tmp_path / "overoptimisation.png").stat().st_size > 10_000

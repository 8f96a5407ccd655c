"""What a PPO run reports besides its per-iteration metrics: health alarms, held-out
evaluations (gold, reward-model score and KL of the current policy) and the summary.

Functions take `r`, the train.ppo.Run of the run (config, tokenizer, prompts, settings,
compiled phases, frozen roles).

summary.json:
  sft, ppo      eval points (iteration, gold with 95% bootstrap CI, RM score, reward after the
                EOS penalty, KL to the SFT policy, length, share ended) on the held-out prompts
  gold_diff     paired bootstrap CI of mean(gold_PPO − gold_SFT) over the same prompts (only
                in a world with a gold scorer: data/worlds.py)
  ppo.rm_win    share of held-out prompts where the reward model prefers PPO's reply to SFT's
                (ties ½), with its bootstrap CI: the judge of worlds without gold
  eval_points   every evaluation of the run: the gold / RM vs KL picture of Gao et al. 2022
  best_of_n     train/best_of_n.py rows for the same prompts (analytic KL)
  time_s        wall time in rollout, score, update, eval, best-of-n
"""

import os
import time

import jax
import numpy as np
from tqdm import tqdm

from data import chat
from model import sampler
from train import rl_math
from train.best_of_n import print_table, run_best_of_n
from train.distributed import is_primary, to_host
from train.metrics import write_json


def replies(tok, response_BxT, lengths_B) -> tuple[list[str], np.ndarray]:
    """(texts, ended-with-<|end|>) of generated rows, as every stage's gold scoring reads them."""
    parsed = [chat.parse_reply(tok, row[:n]) for row, n in zip(response_BxT, lengths_B)]
    return [p.text for p in parsed], np.array([p.terminated for p in parsed])


class Health:
    """Warnings when a run leaves its safe range (ppo.md "What to log"), counted for the logs.

    KL past kl_factor × kl.target; clip fraction > clip_frac; approx KL > approx_kl; entropy
    below entropy_ratio × its first value (collapse to one answer, trl #204); mean response
    length more than length_drift (relative) away from its first value.
    """

    def __init__(self, cfg, kl_target: float, saved: dict):
        self.cfg, self.kl_target = cfg, kl_target
        self.first = saved.get("first")
        self.counts = dict(saved.get("counts", {}))

    def check(self, m: dict) -> tuple[dict, list[str]]:
        c = self.cfg
        self.first = self.first or {"entropy": m["entropy"], "length": m["response_length"]}
        first_h, first_len = self.first["entropy"], max(self.first["length"], 1e-9)
        bad = {
            "kl": (
                m["kl"] > c.kl_factor * self.kl_target,
                f"KL {m['kl']:.2f} > {c.kl_factor:g} x target {self.kl_target:g}",
            ),
            "clip_frac": (m["clip_frac"] > c.clip_frac, f"clip fraction {m['clip_frac']:.2f}"),
            "approx_kl": (m["approx_kl"] > c.approx_kl, f"approx KL {m['approx_kl']:.3f}"),
            "entropy": (
                m["entropy"] < c.entropy_ratio * first_h,
                f"entropy {m['entropy']:.3f} collapsed from {first_h:.3f}",
            ),
            "length": (
                abs(m["response_length"] / first_len - 1) > c.length_drift,
                f"mean length {m['response_length']:.1f} drifted from {first_len:.1f}",
            ),
        }
        out = {}
        for name, (hit, _) in bad.items():
            self.counts[name] = self.counts.get(name, 0) + int(hit)
            out[f"warn_{name}"] = float(hit)
        out["warnings_total"] = float(sum(self.counts.values()))
        return out, [msg for hit, msg in bad.values() if hit]

    def to_json(self) -> dict:
        return {"first": self.first, "counts": self.counts}


def evaluate(r, state, policy) -> dict:
    """Held-out prompts answered by `policy` at the rollout temperature: per prompt gold, RM
    score, reward (after the EOS penalty), KL to the reference (Σ_t kl_t with the reward's
    estimator) and length. The same key every time, so policies are compared on the same
    prompts with common random numbers (a paired comparison)."""
    hp, prompts = r.hp, r.prompts.heldout_ids
    key, cols = jax.random.key(r.config.eval.seed), {}
    for start in range(0, len(prompts), hp.batch_size):
        chunk = prompts[start : start + hp.batch_size]
        padded = chunk + [chunk[-1]] * (hp.batch_size - len(chunk))  # one compiled shape
        prompt = sampler.left_pad(padded, hp.pad_id, hp.prompt_len)
        gen = r.phases.rollout(policy, prompt, jax.random.fold_in(key, start))
        batch, _ = r.phases.score(
            policy, r.roles.reference, state.critic_params, r.roles.reward, prompt, gen
        )
        names = ("response", "lengths", "rm_score", "score", "old_logp", "ref_logp", "mask")
        h = {k: v[: len(chunk)] for k, v in to_host({k: batch[k] for k in names}).items()}
        kl = np.asarray(rl_math.compute_kl(h["old_logp"], h["ref_logp"], hp.kl_estimator))
        h["kl"] = (kl * h["mask"]).sum(1)
        for name in ("response", "lengths", "rm_score", "score", "kl"):
            cols.setdefault(name, []).append(h[name])
    cols = {k: np.concatenate(v) for k, v in cols.items()}
    texts, ended = replies(r.tok, cols["response"], cols["lengths"])
    gold = r.prompts.world.gold(r.prompts.heldout, texts, ended)
    return {
        **({} if gold is None else {"gold": gold}),
        "rm_score": cols["rm_score"].astype(np.float64),
        "reward": cols["score"].astype(np.float64),
        "kl": cols["kl"].astype(np.float64),
        "length": cols["lengths"].astype(np.float64),
        "ended": ended.astype(np.float64),
        "texts": texts,
    }


def eval_point(iteration: int, ev: dict, sft: dict | None = None) -> dict:
    """One point of the gold / RM / KL picture (Gao et al. 2022) for the summary; `rm_win`:
    the share of held-out prompts where the reward model scores this policy's reply above the
    SFT policy's (ties count half), the judge when the world has no gold scorer."""
    point = {"iteration": iteration}
    if "gold" in ev:
        mean, lo, hi = rl_math.bootstrap_mean_ci(ev["gold"])
        point.update(gold=mean, gold_lo=lo, gold_hi=hi)
    for name in ("rm_score", "reward", "kl", "length", "ended"):
        point[name] = float(np.mean(ev[name]))
    if sft is not None:
        mean, lo, hi = rl_math.bootstrap_mean_ci(rm_wins(ev["rm_score"], sft["rm_score"]))
        point.update(rm_win=mean, rm_win_lo=lo, rm_win_hi=hi)
    return point


def rm_wins(scores, baseline) -> np.ndarray:
    """Per prompt 1 (reward model prefers `scores`), ½ (tie) or 0."""
    a, b = np.asarray(scores, np.float64), np.asarray(baseline, np.float64)
    return (a > b) + 0.5 * (a == b)


def describe(point: dict) -> str:
    """gold [CI] (when there is gold), RM, win rate vs SFT by the RM, KL: one log line."""
    gold = (f"gold {point['gold']:.3f} [{point['gold_lo']:.3f}, {point['gold_hi']:.3f}] "
            if "gold" in point else "")
    win = f"RM win vs SFT {point['rm_win']:.0%} " if "rm_win" in point else ""
    return f"{gold}RM {point['rm_score']:+.2f} {win}KL {point['kl']:.2f}"


def run_eval(r, state, policy, iteration: int, writer, extras) -> tuple[int, dict]:
    """Evaluate, log (metrics "eval" split, samples.txt), add the point to extras."""
    t = time.perf_counter()
    ev = evaluate(r, state, policy)
    point = eval_point(iteration, ev, extras.get("sft_eval"))
    extras["eval_points"].append(point)
    extras["time_s"]["eval"] = extras["time_s"].get("eval", 0.0) + time.perf_counter() - t
    writer.write(iteration, {k: v for k, v in point.items() if k != "iteration"}, prefix="eval")
    tqdm.write(f"iteration {iteration} eval: {describe(point)}")
    lines = [f"# iteration {iteration}"]
    for i, p in enumerate(r.prompts.heldout[:4]):
        gold = f"gold {ev['gold'][i]:.2f}, " if "gold" in ev else ""
        lines.append(f"Q: {p.text}\nA: {ev['texts'][i]!r}  ({gold}RM {ev['rm_score'][i]:+.2f})")
    if is_primary():
        with open(os.path.join(r.workdir, "samples.txt"), "a") as f:
            f.write("\n".join(lines) + "\n\n")
    return iteration, ev


def finish(r, result, extras, last, wall_s) -> dict:
    """Writes summary.json (see the module docstring), prints the headline, returns it."""
    if last is None or last[0] != result.iteration:  # resumed at the very end: evaluate now
        last = (result.iteration, evaluate(r, result.state, result.state.params))
    sft, ppo = {k: np.asarray(v) for k, v in extras["sft_eval"].items()}, last[1]
    bon, t, hp, cfg = [], time.perf_counter(), r.hp, r.config.best_of_n
    if cfg.ns:
        reward, ns = r.roles.reward, [int(n) for n in cfg.ns.split(",")]
        same_as_ppo = dict(
            temperature=hp.temperature,
            max_new_tokens=hp.max_new_tokens,
            batch_size=hp.batch_size,
            seed=r.config.eval.seed,
            eos_penalty=hp.eos_penalty,
            prompt_len=hp.prompt_len,
        )
        bon = run_best_of_n(
            r.setup,
            r.tok,
            r.roles.reference,
            reward["params"],
            float(reward["gain"]),
            float(reward["bias"]),
            r.prompts.world,
            r.prompts.heldout[: cfg.n_prompts],
            ns,
            **same_as_ppo,
        )
        extras["time_s"]["best_of_n"] = time.perf_counter() - t
    summary = {
        "n_prompts": len(r.prompts.heldout),
        "world": r.prompts.world.name,
        "judge": r.prompts.world.labeller,
        "temperature": hp.temperature,
        "iterations": result.iteration,
        "sft": eval_point(0, sft),
        "ppo": eval_point(result.iteration, ppo, sft),
    }
    if "gold" in ppo:
        diff = rl_math.bootstrap_diff_ci(ppo["gold"], sft["gold"])
        summary["gold_diff"] = {"mean": diff[0], "lo": diff[1], "hi": diff[2]}
    judged = summary.get("gold_diff") or {"lo": summary["ppo"]["rm_win_lo"] - 0.5}
    summary.update({
        "significant": judged["lo"] > 0,  # by gold when there is gold, else by the RM's wins
        "final_beta": float(result.state.kl.beta),
        "best_of_n": bon,
        "eval_points": extras["eval_points"],
        "time_s": {**extras["time_s"], "total_this_process": wall_s},
    })
    write_json(os.path.join(r.workdir, "summary.json"), summary)
    print_headline(summary)
    return summary


def print_headline(s: dict) -> None:
    a, b, ts = s["sft"], s["ppo"], s["time_s"]
    where = f"held-out prompts (n={s['n_prompts']}, T={s['temperature']:g})"
    if "gold_diff" in s:
        d = s["gold_diff"]
        print(
            f"{where}, mean gold [95% CI]: SFT {a['gold']:.3f} [{a['gold_lo']:.3f}, "
            f"{a['gold_hi']:.3f}] → PPO {b['gold']:.3f} [{b['gold_lo']:.3f}, {b['gold_hi']:.3f}]; "
            f"difference {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] at KL {b['kl']:.2f} nats"
        )
    else:
        print(f"{where}, no gold scorer: PPO's reply wins over SFT's by the reward model on "
              f"{b['rm_win']:.0%} [{b['rm_win_lo']:.0%}, {b['rm_win_hi']:.0%}] of prompts "
              f"at KL {b['kl']:.2f} nats")
    print(
        f"RM score {a['rm_score']:+.2f} → {b['rm_score']:+.2f}; replies ended "
        f"{a['ended']:.0%} → {b['ended']:.0%}; wall time: rollout {ts.get('rollout', 0):.0f} s, "
        f"score {ts.get('score', 0):.0f} s, update {ts.get('update', 0):.0f} s, eval "
        f"{ts.get('eval', 0):.0f} s"
    )
    if s["best_of_n"]:
        print_table(s["best_of_n"])

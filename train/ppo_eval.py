"""What a PPO run reports besides its per-iteration metrics: health alarms, held-out
evaluations (gold, reward-model score and KL of the current policy) and the summary.

Functions take `r`, the train.ppo.Run of the run (config, tokenizer, prompts, settings,
compiled phases, frozen roles).

summary.json:
  sft, ppo      eval points (iteration, gold with 95% bootstrap CI, RM score, reward after the
                EOS penalty, KL to the SFT policy, length, share ended) on the held-out prompts
  gold_diff     paired bootstrap CI of mean(gold_PPO − gold_SFT) over the same prompts
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
from train.generation import gold_scores
from train.metrics import write_json


def to_host(tree):
    """Device arrays -> numpy (gathered from every process on multi-host runs)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, jax.device_get(tree))


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
    hp, prompts = r.hp, r.world.eval_prompts
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
    return {
        "gold": gold_scores(r.world.eval_tasks, texts, ended),
        "rm_score": cols["rm_score"].astype(np.float64),
        "reward": cols["score"].astype(np.float64),
        "kl": cols["kl"].astype(np.float64),
        "length": cols["lengths"].astype(np.float64),
        "ended": ended.astype(np.float64),
        "texts": texts,
    }


def eval_point(iteration: int, ev: dict) -> dict:
    """One point of the gold / RM / KL picture (Gao et al. 2022) for the summary."""
    mean, lo, hi = rl_math.bootstrap_mean_ci(ev["gold"])
    point = {"iteration": iteration, "gold": mean, "gold_lo": lo, "gold_hi": hi}
    for name in ("rm_score", "reward", "kl", "length", "ended"):
        point[name] = float(np.mean(ev[name]))
    return point


def run_eval(r, state, policy, iteration: int, writer, extras) -> tuple[int, dict]:
    """Evaluate, log (metrics "eval" split, samples.txt), add the point to extras."""
    t = time.perf_counter()
    ev = evaluate(r, state, policy)
    point = eval_point(iteration, ev)
    extras["eval_points"].append(point)
    extras["time_s"]["eval"] = extras["time_s"].get("eval", 0.0) + time.perf_counter() - t
    writer.write(iteration, {k: v for k, v in point.items() if k != "iteration"}, prefix="eval")
    tqdm.write(
        f"iteration {iteration} eval: gold {point['gold']:.3f} [{point['gold_lo']:.3f}, "
        f"{point['gold_hi']:.3f}] RM {point['rm_score']:+.2f} KL {point['kl']:.2f}"
    )
    lines = [f"# iteration {iteration}"]
    for task, text, g in zip(r.world.eval_tasks[:4], ev["texts"], ev["gold"]):
        lines.append(f"Q: {task.prompt}\nA: {text!r}  (gold {g:.2f})")
    with open(os.path.join(r.workdir, "samples.txt"), "a") as f:
        f.write("\n".join(lines) + "\n\n")
    return iteration, ev


def finish(r, result, extras, last, wall_s) -> dict:
    """Writes summary.json (see the module docstring), prints the headline, returns it."""
    if last is None or last[0] != result.iteration:  # resumed at the very end: evaluate now
        last = (result.iteration, evaluate(r, result.state, result.state.params))
    sft, ppo = extras["sft_eval"], last[1]
    diff = rl_math.bootstrap_diff_ci(ppo["gold"], sft["gold"])
    bon, t, hp, cfg = [], time.perf_counter(), r.hp, r.config.best_of_n
    if cfg.ns:
        reward, ns = r.roles.reward, [int(n) for n in cfg.ns.split(",")]
        gain, bias = float(reward["gain"]), float(reward["bias"])
        same_as_ppo = dict(
            temperature=hp.temperature,
            max_new_tokens=hp.max_new_tokens,
            batch_size=hp.batch_size,
            seed=r.config.eval.seed,
            eos_penalty=hp.eos_penalty,
            prompt_len=hp.prompt_len,
        )
        tasks = r.world.eval_tasks[: cfg.n_prompts]
        bon = run_best_of_n(
            r.setup,
            r.tok,
            r.roles.reference,
            reward["params"],
            gain,
            bias,
            tasks,
            ns,
            **same_as_ppo,
        )
        extras["time_s"]["best_of_n"] = time.perf_counter() - t
    summary = {
        "n_prompts": len(r.world.eval_prompts),
        "temperature": hp.temperature,
        "iterations": result.iteration,
        "sft": eval_point(0, {k: np.asarray(v) for k, v in sft.items()}),
        "ppo": eval_point(result.iteration, ppo),
        "gold_diff": {"mean": diff[0], "lo": diff[1], "hi": diff[2]},
        "significant": diff[1] > 0,
        "final_beta": float(result.state.kl.beta),
        "best_of_n": bon,
        "eval_points": extras["eval_points"],
        "time_s": {**extras["time_s"], "total_this_process": wall_s},
    }
    write_json(os.path.join(r.workdir, "summary.json"), summary)
    print_headline(summary)
    return summary


def print_headline(s: dict) -> None:
    a, b, d, ts = s["sft"], s["ppo"], s["gold_diff"], s["time_s"]
    print(
        f"held-out task prompts (n={s['n_prompts']}, T={s['temperature']:g}), mean gold "
        f"[95% CI]: SFT {a['gold']:.3f} [{a['gold_lo']:.3f}, {a['gold_hi']:.3f}] → PPO "
        f"{b['gold']:.3f} [{b['gold_lo']:.3f}, {b['gold_hi']:.3f}]; difference "
        f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] at KL {b['kl']:.2f} nats"
    )
    print(
        f"RM score {a['rm_score']:+.2f} → {b['rm_score']:+.2f}; replies ended "
        f"{a['ended']:.0%} → {b['ended']:.0%}; wall time: rollout {ts.get('rollout', 0):.0f} s, "
        f"score {ts.get('score', 0):.0f} s, update {ts.get('update', 0):.0f} s, eval "
        f"{ts.get('eval', 0):.0f} s"
    )
    if s["best_of_n"]:
        print_table(s["best_of_n"])

"""Pipeline evaluation: base, SFT and PPO policies on the same held-out prompts.

For each policy: greedy answers to the held-out prompts of the SFT stage's world (config
sft.eval, data/worlds.py), the normalised reward-model score, the share of replies that end
and their length; the reward model's win rates (sft over base, ppo over sft: the share of
prompts where it scores the later policy's reply higher, ties ½); in a world with a gold
scorer also gold, answer correctness (gold without its style factors), the share of chatty
replies (data/demonstrators.py), all with 95% bootstrap intervals, and paired gold
differences; and best-of-n against the reward model from SFT samples (n = 1…16, analytic KL
log n − (n−1)/n). Writes <pipeline>/evaluate/summary.json and answers.jsonl for the report.
"""

import json
import os
import time

import jax
import ml_collections
import numpy as np

from data import worlds
from data.tokenizer import load_tokenizer
from train import best_of_n, distributed, ppo_eval, reward_data, rl_math, sft
from train import reward as reward_lib
from train import setup as setup_lib
from train.checkpoint import abstract_like, load_params
from train.generation import ChatGenerator
from train.metrics import write_json

POLICIES = {"base": "pretrain", "sft": "sft", "ppo": "ppo"}


def load_pipeline_config(root: str) -> ml_collections.ConfigDict:
    with open(os.path.join(root, "pipeline_config.json")) as f:
        return ml_collections.ConfigDict(json.load(f))


def score_replies(reward_fn, tok, prompts, texts, terminated, seq_len, batch_multiple):
    """Normalised reward-model score of each (prompt, reply)."""
    seqs = [reward_data.render_reply(tok, p.messages, x, bool(e), seq_len)[0]
            for p, x, e in zip(prompts, texts, terminated, strict=True)]
    n = len(seqs)
    seqs += [seqs[-1]] * (-n % batch_multiple)
    batch = reward_data.right_pad(seqs, tok.pad_id, max(map(len, seqs)))
    return np.asarray(reward_fn(batch))[:n].astype(np.float64)


def _ci(x) -> dict:
    mean, lo, hi = rl_math.bootstrap_mean_ci(np.asarray(x, np.float64))
    return {"mean": mean, "lo": lo, "hi": hi}


def run(root: str) -> dict:
    start = time.perf_counter()
    c = load_pipeline_config(root)
    cfg = c.sft
    setup = setup_lib.make_setup(cfg)
    tok = load_tokenizer(cfg.data.tokenizer)
    world = worlds.make_world({"heldout": cfg.eval}, sft.task_words(cfg.data), "sft.eval")
    prompts = world.prompts("heldout")
    ids = worlds.render_prompts(tok, prompts, cfg.eval.max_new_tokens, cfg.model.max_seq_len,
                                "sft.eval")
    gen = ChatGenerator(setup, tok, cfg.eval.max_new_tokens, greedy=True,
                        batch_size=cfg.eval.batch_size)
    rm_params, norm = reward_lib.load_reward_model(os.path.join(root, "reward"), setup,
                                                   what="--pipeline reward stage")
    reward_fn = reward_lib.make_reward_fn(setup, rm_params, norm)
    multiple = setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]
    lm_sh, lm_abstract = setup.param_shardings()
    results, answers, params = {}, {}, {}
    for name, stage in POLICIES.items():
        params[name], _ = load_params(os.path.join(root, stage, "ckpt"),
                                      abstract_like(lm_abstract, lm_sh))
        out = gen.generate_ids(params[name], ids, jax.random.key(0))
        gold = world.gold(prompts, out.texts, out.terminated)
        rm = score_replies(reward_fn, tok, prompts, out.texts, out.terminated,
                           cfg.model.max_seq_len, multiple)
        answers[name] = {"texts": out.texts, "rm": rm,
                         **({} if gold is None else {"gold": gold})}
        details = world.details(prompts, out.texts)
        results[name] = {**({} if gold is None else {"gold": _ci(gold)}), "rm": _ci(rm),
                         **({"correctness": _ci(details["correctness"]),
                             "chatty": float(np.mean(details["chatty"]))} if details else {}),
                         "terminated": float(np.mean(out.terminated)),
                         "length": float(np.mean(out.lengths))}
    pairs = (("base", "sft"), ("sft", "ppo"))
    diffs = {f"{b}_minus_{a}": dict(zip(("mean", "lo", "hi"), rl_math.bootstrap_diff_ci(
        answers[b]["gold"], answers[a]["gold"]))) for a, b in pairs if world.has_gold}
    wins = {f"{b}_over_{a}": _ci(ppo_eval.rm_wins(answers[b]["rm"], answers[a]["rm"]))
            for a, b in pairs}
    with open(os.path.join(root, "ppo", "summary.json")) as f:
        bon = json.load(f).get("best_of_n")  # the PPO stage measured it on the same prompts
    bon = bon or run_bon(c, setup, tok, params["sft"], rm_params, norm, world, prompts)
    summary = {"n_prompts": len(prompts), "policies": results,
               **({"gold_differences": diffs} if world.has_gold else {}),
               "rm_win_rates": wins, "best_of_n": bon, "wall_s": time.perf_counter() - start,
               "labeller": world.labeller}
    write(root, summary, prompts, answers)
    return summary


def run_bon(c, setup, tok, sft_params, rm_params, norm, world, prompts):
    e = c.evaluate
    ns = [int(n) for n in str(e.bon_ns).split(",")]
    return best_of_n.run_best_of_n(
        setup, tok, sft_params, rm_params, norm.gain, norm.bias, world, prompts[: e.bon_prompts],
        ns, temperature=e.bon_temperature, max_new_tokens=c.sft.eval.max_new_tokens,
        batch_size=c.sft.eval.batch_size, seed=c.seed)


def write(root, summary, prompts, answers):
    out = os.path.join(root, "evaluate")
    if distributed.is_primary():
        os.makedirs(out, exist_ok=True)
        write_answers(os.path.join(out, "answers.jsonl"), prompts, answers)
    write_json(os.path.join(out, "summary.json"), summary)  # last: marks the stage complete
    for name, r in summary["policies"].items():
        g, m = r.get("gold"), r["rm"]
        gold = f"gold {g['mean']:.3f} [{g['lo']:.3f}, {g['hi']:.3f}]  " if g else ""
        print(f"{name:5s} {gold}RM {m['mean']:+.2f}  terminated {r['terminated']:.0%}")
    for name, w in summary["rm_win_rates"].items():
        print(f"RM win rate {name}: {w['mean']:.0%} [{w['lo']:.0%}, {w['hi']:.0%}]")


def write_answers(path, prompts, answers):
    with open(path, "w") as f:
        for i, p in enumerate(prompts):
            row = {"prompt": p.text, "family": p.group}
            if p.task is not None:
                row["reference"] = p.task.answer
            for name, a in answers.items():
                row[name] = {"text": a["texts"][i], "rm": float(a["rm"][i]),
                             **({"gold": float(a["gold"][i])} if "gold" in a else {})}
            f.write(json.dumps(row) + "\n")

"""Pipeline evaluation: base, SFT and PPO policies on the same held-out task prompts.

For each policy: greedy answers, gold score (the programmatic labeller's scorer), answer
correctness (gold without its style factors), the share of chatty replies (data/demonstrators.py)
and the normalised reward-model score, with 95% bootstrap intervals; paired gold differences between
stages; and best-of-n against the reward model from SFT samples (n = 1…16, analytic KL
log n − (n−1)/n). Writes <pipeline>/evaluate/summary.json and answers.jsonl for the report.
"""

import json
import os
import time

import jax
import ml_collections
import numpy as np

from data import demonstrators
from data import tasks as tasks_lib
from data.tokenizer import load_tokenizer
from train import best_of_n, reward_data, rl_math, sft
from train import reward as reward_lib
from train import setup as setup_lib
from train.checkpoint import abstract_like, load_params
from train.generation import ChatGenerator, eval_tasks, gold_scores
from train.metrics import write_json

POLICIES = {"base": "pretrain", "sft": "sft", "ppo": "ppo"}


def load_pipeline_config(root: str) -> ml_collections.ConfigDict:
    with open(os.path.join(root, "pipeline_config.json")) as f:
        return ml_collections.ConfigDict(json.load(f))


def score_replies(reward_fn, tok, tasks, texts, terminated, seq_len, batch_multiple):
    """Normalised reward-model score of each (prompt, reply)."""
    seqs = [reward_data.render_reply(tok, tasks_lib.prompt_messages(t), x, bool(e), seq_len)[0]
            for t, x, e in zip(tasks, texts, terminated, strict=True)]
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
    task_list = eval_tasks(cfg.eval, sft.task_words(cfg.data))
    prompts = [tasks_lib.prompt_messages(t) for t in task_list]
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
        out = gen.generate(params[name], prompts, jax.random.key(0))
        gold = gold_scores(task_list, out.texts, out.terminated)
        rm = score_replies(reward_fn, tok, task_list, out.texts, out.terminated,
                           cfg.model.max_seq_len, multiple)
        answers[name] = {"texts": out.texts, "gold": gold, "rm": rm}
        correct = [tasks_lib.correctness(t, x) for t, x in zip(task_list, out.texts, strict=True)]
        results[name] = {"gold": _ci(gold), "rm": _ci(rm), "correctness": _ci(correct),
                         "chatty": float(np.mean([demonstrators.is_chatty(x) for x in out.texts])),
                         "terminated": float(np.mean(out.terminated)),
                         "length": float(np.mean(out.lengths))}
    diffs = {f"{b}_minus_{a}": dict(zip(("mean", "lo", "hi"), rl_math.bootstrap_diff_ci(
        answers[b]["gold"], answers[a]["gold"]))) for a, b in (("base", "sft"), ("sft", "ppo"))}
    with open(os.path.join(root, "ppo", "summary.json")) as f:
        bon = json.load(f).get("best_of_n")  # the PPO stage measured it on the same prompts
    bon = bon or run_bon(c, setup, tok, params["sft"], rm_params, norm, task_list)
    summary = {"n_prompts": len(task_list), "policies": results, "gold_differences": diffs,
               "best_of_n": bon, "wall_s": time.perf_counter() - start,
               "labeller": "synthetic preferences from a programmatic labeller (gold scorer)"}
    write(root, summary, task_list, answers)
    return summary


def run_bon(c, setup, tok, sft_params, rm_params, norm, task_list):
    e = c.evaluate
    ns = [int(n) for n in str(e.bon_ns).split(",")]
    return best_of_n.run_best_of_n(
        setup, tok, sft_params, rm_params, norm.gain, norm.bias, task_list[: e.bon_prompts], ns,
        temperature=e.bon_temperature, max_new_tokens=c.sft.eval.max_new_tokens,
        batch_size=c.sft.eval.batch_size, seed=c.seed)


def write(root, summary, task_list, answers):
    out = os.path.join(root, "evaluate")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "answers.jsonl"), "w") as f:
        for i, task in enumerate(task_list):
            row = {"prompt": task.prompt, "family": task.family, "reference": task.answer}
            for name, a in answers.items():
                row[name] = {"text": a["texts"][i], "gold": float(a["gold"][i]),
                             "rm": float(a["rm"][i])}
            f.write(json.dumps(row) + "\n")
    write_json(os.path.join(out, "summary.json"), summary)  # last: marks the stage complete
    for name, r in summary["policies"].items():
        g, m = r["gold"], r["rm"]
        print(f"{name:5s} gold {g['mean']:.3f} [{g['lo']:.3f}, {g['hi']:.3f}]  "
              f"RM {m['mean']:+.2f}  terminated {r['terminated']:.0%}")

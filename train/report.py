"""report.md (+ PNG plots) of a pipeline folder, rebuilt from the run folders alone.

    python -m scripts.report --pipeline runs/pipeline_tiny
"""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from model.config import ModelConfig  # noqa: E402
from train.metrics import atomic_write, read_metrics  # noqa: E402

LABELLER = ("synthetic preferences from a programmatic labeller (a noisy Bradley-Terry rater "
            "over the gold scorer of the synthetic tasks) — not human data")


def _load(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _read_text(path) -> str:
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read()


def _ci(d) -> str:
    return f"{d['mean']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]"


def demonstrators_line(root: str) -> str:
    cfg = _load(os.path.join(root, "pipeline_config.json"), {})
    share = cfg.get("sft", {}).get("data", {}).get("task_chatty_fraction")
    if share is None:
        return ""
    return (f"The task demonstrations of SFT come from two synthetic demonstrators "
            f"(data/demonstrators.py): {1 - share:.0%} direct replies, {share:.0%} chatty ones "
            "(an opener and a sign-off around the same reply). The gold scorer prefers the "
            "direct form; \"answer correctness\" below is the gold score without its style "
            "factors (position of the answer, length), so it shows what the replies say.")


def headline_table(ev: dict) -> str:
    rows = ["| Policy | Gold score (95% CI) | Answer correctness | Chatty replies | "
            "Reward model (normalised) | Replies ended | Mean length |",
            "|---|---|---|---:|---:|---:|---:|"]
    for name, r in ev["policies"].items():
        correct = _ci(r["correctness"]) if "correctness" in r else "–"
        chatty = f"{r['chatty']:.0%}" if "chatty" in r else "–"
        rows.append(f"| {name} | {_ci(r['gold'])} | {correct} | {chatty} | "
                    f"{r['rm']['mean']:+.2f} | {r['terminated']:.0%} | {r['length']:.1f} |")
    return "\n".join(rows)


def plot_curves(root, out_png, run, keys, title):
    rows = read_metrics(os.path.join(root, run))
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for split, style in (("train", "-"), ("eval", "o-")):
            pts = [(r["step"], r[key]) for r in rows if r.get("split") == split
                   and isinstance(r.get(key), int | float)]
            if pts:
                ax.plot(*zip(*pts), style, label=split, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.path.join(root, out_png), dpi=90)
    plt.close(fig)
    return f"![{title}]({out_png})"


def plot_overoptimisation(root, ev, ppo) -> str:
    """Gold and RM score against KL: best-of-n and PPO checkpoints (Gao et al. 2022)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    bon = ev.get("best_of_n", [])
    if bon:
        kl = [b["kl"] for b in bon]
        a1.plot(kl, [b["gold_mean"] for b in bon], "o-", label="best-of-n")
        a2.plot(kl, [b["rm_mean"] for b in bon], "o-", label="best-of-n")
    pts = (ppo or {}).get("eval_points", [])
    if pts:
        kl = [p["kl"] for p in pts]
        a1.plot(kl, [p["gold"] for p in pts], "s-", label="PPO")
        a2.plot(kl, [p["rm_score"] for p in pts], "s-", label="PPO")
    for ax, what in ((a1, "gold score"), (a2, "reward model score")):
        ax.set_xlabel("KL to SFT (nats)")
        ax.set_title(what)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(root, "overoptimisation.png"), dpi=90)
    plt.close(fig)
    return "![gold and reward-model score against KL](overoptimisation.png)"


def _answers(root) -> list[dict]:
    """The evaluate stage's answers.jsonl rows ([] when the stage has not run)."""
    path = os.path.join(root, "evaluate", "answers.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def side_by_side(root, k=8) -> str:
    answers = _answers(root)[:k]
    if not answers:
        return ""
    rows = ["| Prompt | Base | SFT | PPO |", "|---|---|---|---|"]
    for a in answers:
        cells = [_cell(a["prompt"])] + [
            f"{_cell(a[p]['text'])} ({a[p]['gold']:.2f})" for p in ("base", "sft", "ppo")]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def family_table(root) -> str:
    """Mean gold per task family and policy, from the evaluate stage's answers."""
    answers = _answers(root)
    if not answers:
        return ""
    policies = [p for p in ("base", "sft", "ppo") if p in answers[0]]
    rows = ["| Family | n | " + " | ".join(f"{p} gold" for p in policies) + " |",
            "|---|---:|" + "---:|" * len(policies)]
    for family in dict.fromkeys(a["family"] for a in answers):
        group = [a for a in answers if a["family"] == family]
        means = [sum(a[p]["gold"] for a in group) / len(group) for p in policies]
        rows.append(f"| {family} | {len(group)} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    return "\n".join(rows)


def _cell(text: str, limit: int = 90) -> str:
    text = text.replace("|", "\\|").replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compute_table(root) -> str:
    compute = _load(os.path.join(root, "compute.json"), {})
    rows = ["| Stage | Tokens | FLOPs | Wall time | of which compiling | First step after | "
            "Peak memory (RSS) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for stage, rec in compute.items():
        tokens, flops = training_compute(root, stage)
        # compile: tracing + lowering + compiling or reading the persistent cache
        compile_s = (f"{rec['compile_s']:.0f} s ({rec.get('cache_hits', 0)} cache hits)"
                     if "compile_s" in rec else "–")
        first = f"{rec['first_step_s']:.1f} s" if "first_step_s" in rec else "–"
        cached = " (stage cache)" if rec.get("cached") else ""
        rows.append(f"| {stage}{cached} | {_num(tokens)} | {_num(flops)} | {rec['wall_s']:.0f} s "
                    f"| {compile_s} | {first} | {rec['max_rss_mb'] / 1024:.2f} GB |")
    return "\n".join(rows)


def training_compute(root, stage):
    """(tokens, FLOPs) of a fit()-based stage: steps × rows × seq_len, × FLOPs per token."""
    cfg = _load(os.path.join(root, stage, "config.json"))
    steps = [r["step"] for r in read_metrics(os.path.join(root, stage), "train")]
    if not cfg or not steps or stage not in ("pretrain", "sft", "reward"):
        return None, None
    rows = cfg["data"]["batch_size"] * (2 if stage == "reward" else 1)  # reward: pairs
    seq = cfg["data"]["seq_len"]
    tokens = max(steps) * rows * seq
    return tokens, tokens * ModelConfig.from_config(cfg["model"]).flops_per_token(seq)


def _num(x) -> str:
    if not isinstance(x, int | float):
        return "–"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def build(root: str) -> str:
    """Writes <root>/report.md (and its PNGs) from the stage folders; returns the text."""
    s = {name: _load(os.path.join(root, name, "summary.json"), {}) for name in
         ("pretrain", "sft", "collect", "reward", "ppo", "evaluate")}
    ev, pre, rm, col = s["evaluate"], s["pretrain"], s["reward"], s["collect"]
    mixture = _read_text(os.path.join(root, "pretrain", "mixture.md"))
    parts = [
        "# jaxchat pipeline report", "",
        "Pretraining → SFT → reward model → PPO on the embedded default, measured on held-out "
        "synthetic task prompts by the programmatic gold scorer. Preferences are "
        f"{LABELLER}.", "", demonstrators_line(root), "",
        "## Headline (greedy answers, held-out task prompts)", "",
        headline_table(ev) if ev else "(evaluate stage missing)", "",
    ]
    for key, d in (ev.get("gold_differences") or {}).items():
        parts.append(f"- gold {key.replace('_', ' ')}: {_ci(d)} (paired bootstrap)")
    parts += ["", "## Pretraining data (as the LLaMA table of the seed article)", "", mixture, "",
              f"Validation loss {pre.get('val_loss', float('nan')):.3f} nats/token against the "
              f"corpus's unigram entropy {pre.get('unigram_entropy', float('nan')):.3f} "
              "nats/token.",
              "", plot_curves(root, "pretrain_loss.png", "pretrain", ["loss"], "pretraining"), "",
              "## Supervised fine-tuning", "",
              plot_curves(root, "sft_loss.png", "sft", ["loss"], "SFT"), ""]
    if rm:
        parts += ["## Reward model", "",
                  f"{rm.get('train_pairs')} training pairs ({col.get('annotator', LABELLER)}); "
                  f"held-out accuracy against the labels {rm.get('heldout_accuracy', 0):.3f}, "
                  f"against the gold ordering {rm.get('heldout_accuracy_gold', 0):.3f} "
                  f"({rm.get('heldout_pairs')} held-out pairs).", "",
                  plot_curves(root, "reward_acc.png", "reward", ["loss", "accuracy"], "reward"),
                  ""]
    if s["ppo"]:
        parts += ["## PPO", "", plot_curves(root, "ppo_curves.png", "ppo",
                                            ["reward", "gold", "kl", "entropy", "response_length"],
                                            "PPO"), ""]
    parts += ["## Same prompts, three models", "", side_by_side(root), "",
              "Gold per task family (greedy, held-out prompts):", "", family_table(root), "",
              "## Reward over-optimisation (Gao et al. 2022)", "",
              plot_overoptimisation(root, ev, s["ppo"]) if ev else "", ""]
    if ev.get("best_of_n"):
        parts += ["| n | KL (nats) | gold (95% CI) | RM score |", "|---:|---:|---|---:|"]
        parts += [f"| {b['n']} | {b['kl']:.2f} | {b['gold_mean']:.3f} [{b['gold_ci'][0]:.3f}, "
                  f"{b['gold_ci'][1]:.3f}] | {b['rm_mean']:+.2f} |" for b in ev["best_of_n"]]
        parts.append("")
    parts += ["## Compute per stage", "", compute_table(root), ""]
    text = "\n".join(parts)
    atomic_write(os.path.join(root, "report.md"), text)
    return text

"""Stage 2 — supervised fine-tuning: teach the pretrained model to answer in the chat format.

    python -m scripts.train --config configs/sft/tiny.py --workdir runs/sft_tiny

A foundation model completes documents: asked a question it often carries on with another
question. Fine-tuning on well-formed dialogues teaches it to answer. This stage measures that
on the held-out prompts of its world (data/worlds.py, config.eval): on the synthetic assistant
tasks, the mean gold score of greedy answers to the same held-out task prompts, rendered in the
same chat format, for the base (pretrained) params and for the fine-tuned ones, with bootstrap
intervals; on a user's prompts file, the answers themselves (answers.md); always the
validation loss.

Reads top to bottom: tokenizer → task words → conversation sets (tasks, dialogues, local
files) → rendered and packed grain streams → params from the pretraining checkpoint (a fresh
optimizer) → base answers → fit() → summary.json, answers.md and the headline.
"""

import json
import math
import os
import re
import time

import jax
import numpy as np

from data import chat, demonstrators, pipeline, sources, textclean, worlds
from data import corpus as corpus_lib
from data import dialogues as dialogues_lib
from data import tasks as tasks_lib
from data import tokenizer as tokenizer_lib
from data.tokenizer import Tokenizer, check_vocab
from train import losses, rl_math
from train import setup as setup_lib
from train.checkpoint import abstract_like, load_params
from train.generation import ChatGenerator
from train.loop import Hooks, fit
from train.metrics import atomic_write, write_json
from train.step import make_eval_step, make_train_step

TASKS = "tasks"  # the mixture name of the synthetic task demonstrations
# Open prompts answered next to the task prompts in samples.txt and answers.md.
CHAT_PROMPTS = (
    "Hi! How are you today?",
    "What do you like to do on the weekend?",
    "Can you tell me about your family?",
)


def run(config, workdir: str):
    start_time = time.perf_counter()
    data = config.data
    tok = load_tokenizer(data.tokenizer)
    check_vocab(tok, config.model.vocab_size)
    dialogue_cache = {}
    words = task_words(data, dialogue_cache)
    train_sets, val_sets = build_conversation_sets(data, words, config.seed, dialogue_cache)
    setup = setup_lib.make_setup(config)
    params, params_sh = load_init_params(config.init_from, setup)
    evaluator = GoldEval(setup, tok, config.eval, words)
    base = evaluator.answers(params)  # before any update: the pretrained model's answers
    state, state_sh, tx = setup_lib.make_train_state(
        setup, params, params_sh, config.optim, config.train.steps, config.seed
    )
    loss_fn = losses.make_lm_loss(setup.model(), config.get("z_loss", 0.0))
    step_fn = make_train_step(
        loss_fn, tx, config.optim.grad_accum, state_sh, setup.mesh, setup.rules
    )
    train_iter, n_truncated = make_train_iterator(tok, train_sets, data, config.seed, setup.mesh)
    val_loss = make_val_eval(
        loss_fn, params_sh, setup, render_sets(tok, val_sets), data, config.train.eval_batches
    )
    flops_per_token = setup.model_cfg.flops_per_token(data.seq_len)
    hooks = Hooks(
        eval_fn=lambda p: {**val_loss(p), **evaluator.metrics(evaluator.answers(p))},
        sample_fn=lambda p, step: side_by_side_text(step, base, evaluator.answers(p), 3),
        extras={"task_words": words or []},
        tokens_per_step=data.batch_size * data.seq_len,
        flops_per_step=data.batch_size * data.seq_len * flops_per_token,
        peak_flops=setup_lib.total_peak_flops(),
    )
    result = fit(
        workdir=workdir,
        cfg=config.train,
        state=state,
        state_sh=state_sh,
        step_fn=step_fn,
        data_iter=train_iter,
        hooks=hooks,
        run_config=config,
    )
    if not result.interrupted:
        extra = run_facts(result, val_loss, train_sets, n_truncated, start_time)
        write_summary(
            workdir, base, evaluator.answers(result.state.params), extra, config.eval.n_side_by_side
        )
    return result


# ------------------------------------------------------------------------------ inputs


def load_tokenizer(path: str) -> Tokenizer:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"config data.tokenizer={path!r} does not exist: SFT uses the "
            "pretraining stage's tokenizer (set data.tokenizer to it)"
        )
    return tokenizer_lib.load_tokenizer(path)


def load_init_params(init_from: str, setup):
    """(params, shardings) of the newest checkpoint in `<init_from>/ckpt` — params only: the
    optimizer state of the pretraining run is not read, SFT starts a fresh one."""
    ckpt_dir = os.path.join(init_from, "ckpt")
    if not os.path.isdir(ckpt_dir):  # checked here: the checkpoint manager would create it
        raise FileNotFoundError(
            f"config init_from={init_from!r}: no checkpoint folder "
            f"{ckpt_dir}; run the pretraining stage into {init_from} first"
        )
    shardings, abstract = setup.param_shardings()
    try:
        params, _ = load_params(ckpt_dir, abstract_like(abstract, shardings))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"config init_from={init_from!r}: {e}") from None
    return params, shardings


def _dialogue_texts(name: str, data, cache: dict, key: str = "data.sft_mixture") -> list:
    """Messages lists of a dialogue set: a dialogue source or local:<file.jsonl>."""
    if name not in cache:
        if name.startswith(sources.LOCAL_PREFIX):
            path = name[len(sources.LOCAL_PREFIX) :]
            if not os.path.isfile(path):
                raise FileNotFoundError(f"config {key}: {name}: no such file {path!r}")
            cache[name] = dialogues_lib.read_dialogues(path)
        else:
            cache[name] = sources.load_dialogues(name, data.cache_dir or None)
    return cache[name]


def task_words(data, cache: dict | None = None) -> list[str] | None:
    """The task vocabulary: the data.n_task_words most common words of the dialogue sets
    named in data.task_word_sources; None (data/tasks.py's fallback list) when that is empty."""
    names = [n.strip() for n in data.task_word_sources.split(",") if n.strip()]
    if not names:
        return None
    cache = {} if cache is None else cache

    def texts():
        for name in names:
            for conv in _dialogue_texts(name, data, cache, "data.task_word_sources"):
                yield from (m["content"] if isinstance(m, dict) else m for m in conv)

    return corpus_lib.common_words(texts(), data.n_task_words)


def _chunk_turns(turns: list[str], max_turns: int) -> list[list[dict]]:
    """A dialogue of alternating turns cut into conversations of at most max_turns turns.
    Chunks start at even turns, so the first speaker is always the user."""
    step = max_turns or len(turns)
    chunks = (
        dialogues_lib.conversations_from_turns(turns[i : i + step])
        for i in range(0, len(turns), step)
    )
    return [c for c in chunks if c is not None]


def build_conversation_sets(data, words, seed: int, cache: dict | None = None):
    """(train, val): set name → list of messages, for every set of data.sft_mixture.

    tasks: data.n_tasks train-split demonstrations and data.n_val_tasks held-out ones.
    Dialogues: split whole by textclean.split_holdout with data.val_fraction and
    data.split_seed (as pretraining splits its documents), then cut into max_turns pieces.
    """
    if data.max_turns < 0 or data.max_turns % 2:
        raise ValueError(
            f"config data.max_turns={data.max_turns} must be an even number >= 2 "
            "(user/assistant pairs), or 0 for whole dialogues"
        )
    mixture = corpus_lib.parse_mixture(data.sft_mixture)
    corpus_lib.validate_mixture(mixture)
    cache = {} if cache is None else cache
    families = tuple(f.strip() for f in data.task_families.split(","))
    train, val = {}, {}
    for name, _ in mixture:
        if name == TASKS:
            make = lambda n, split, s: demonstrators.demonstrations(
                tasks_lib.make_tasks(
                    families, n, s, split=split, difficulty=data.task_difficulty, words=words
                ),
                data.task_chatty_fraction,
                seed=f"{s}:{split}",
            )
            train[name] = make(data.n_tasks, "train", seed)
            val[name] = make(data.n_val_tasks, "heldout", seed)
            continue
        convs = _dialogue_texts(name, data, cache)
        keys = [json.dumps(c) for c in convs]
        _, val_keys = textclean.split_holdout(keys, data.val_fraction, data.split_seed)
        held = set(val_keys)
        parts = {False: [], True: []}
        for conv, key in zip(convs, keys, strict=True):
            is_val = key in held
            if name.startswith(sources.LOCAL_PREFIX):
                parts[is_val].append(conv)
            else:
                parts[is_val].extend(_chunk_turns(conv, data.max_turns))
        cap = data.max_conversations or None
        train[name], val[name] = parts[False][:cap], parts[True][:cap]
        if not train[name]:
            raise ValueError(f"config data.sft_mixture: set {name!r} has no training conversations")
    return train, val


def render_sets(tok, sets: dict) -> dict:
    """Set name → [(ids, loss_mask)] in the chat format (data/chat.py)."""
    return {
        name: [chat.render_conversation(tok, m) for m in convs]
        for name, convs in sets.items()
        if convs
    }


def make_train_iterator(tok, train_sets, data, seed: int, mesh):
    """(global batch iterator, conversations truncated to seq_len) over the mixture."""
    weights = dict(corpus_lib.parse_mixture(data.sft_mixture))
    dataset, n_truncated = pipeline.make_sft_dataset(
        render_sets(tok, train_sets), weights, data.seq_len, seed
    )
    return pipeline.make_batch_iterator(dataset, data.batch_size, mesh), n_truncated


def make_val_eval(loss_fn, params_sh, setup, val_convs: dict, data, max_batches: int):
    """Validation loss (nats per assistant token) over held-out conversations: overall and
    per set (`loss_<set>`), from at most max_batches fixed batches of each set."""
    eval_step = make_eval_step(loss_fn, params_sh, setup.mesh, setup.rules)
    batches = {}
    for name, convs in val_convs.items():
        dataset, _ = pipeline.make_sft_dataset({name: convs}, None, data.seq_len, 0, train=False)
        it = pipeline.make_batch_iterator(dataset, data.batch_size, setup.mesh)
        batches[name] = [b for b, _ in zip(it, range(max_batches))]

    def eval_fn(params):
        out, loss, weight = {}, 0.0, 0.0
        for name, bs in batches.items():
            sums = [eval_step(params, b) for b in bs]
            n_loss = sum(float(s["loss"]) for s in sums)
            n_weight = sum(float(s["weight"]) for s in sums)
            out["loss_" + re.sub(r"\W+", "_", name)] = n_loss / max(n_weight, 1.0)
            loss, weight = loss + n_loss, weight + n_weight
        return {"loss": loss / max(weight, 1.0), "tokens": weight, **out}

    return eval_fn


# ------------------------------------------------------------------------------ gold evaluation


class GoldEval:
    """Greedy answers to the held-out prompts of the stage's world (config.eval: the synthetic
    task prompts, or a prompts file) plus a few open chat prompts, and their gold scores when
    the world has a gold scorer (None otherwise). The answers for the params last seen are
    kept, so the eval and sample hooks of one step generate once."""

    def __init__(self, setup, tok, eval_cfg, words):
        self.world = worlds.make_world({"heldout": eval_cfg}, words, "config.eval")
        self.held = self.world.prompts("heldout")
        chats = [[{"role": "user", "content": p}] for p in CHAT_PROMPTS]
        self.prompts = [p.text for p in self.held] + list(CHAT_PROMPTS)
        n_calls = -(-len(self.prompts) // eval_cfg.batch_size)  # equal batches, none too big
        self.generator = ChatGenerator(
            setup,
            tok,
            eval_cfg.max_new_tokens,
            greedy=True,
            batch_size=-(-len(self.prompts) // n_calls),
        )
        self.ids = worlds.render_prompts(tok, self.held, eval_cfg.max_new_tokens,
                                         setup.model_cfg.max_seq_len, "eval")
        self.ids += self.generator.render(chats)
        self._last = (None, None)

    def answers(self, params) -> dict:
        if self._last[0] is params:
            return self._last[1]
        out = self.generator.generate_ids(params, self.ids, jax.random.key(0))  # greedy
        n = len(self.held)
        answers = {
            "prompts": self.prompts,
            "texts": out.texts,
            "terminated": out.terminated,
            "n_held": n,
            "gold": self.world.gold(self.held, out.texts[:n], out.terminated[:n]),
            "families": [p.group for p in self.held],
        }
        self._last = (params, answers)
        return answers

    @staticmethod
    def metrics(answers: dict) -> dict:
        """Share of terminated replies on the held-out prompts (all prompts when there are
        none); mean gold and gold per family when the world has a gold scorer."""
        gold, n = answers["gold"], answers["n_held"] or len(answers["texts"])
        out = {"terminated": float(answers["terminated"][:n].mean())}
        if gold is None:
            return out
        out = {"gold": float(gold.mean()), **out}
        families = np.array(answers["families"])
        for family in dict.fromkeys(answers["families"]):
            out[f"gold_{family}"] = float(gold[families == family].mean())
        return out


def side_by_side(base: dict, sft: dict, k: int) -> list[dict]:
    """The first k held-out prompts and every chat prompt: prompt, both answers, both golds
    (None for chat prompts, and in a world without gold)."""
    n = base["n_held"]
    rows = list(range(min(k, n))) + list(range(n, len(base["prompts"])))
    gold = lambda a, i: float(a["gold"][i]) if i < n and a["gold"] is not None else None
    return [
        {
            "prompt": base["prompts"][i],
            "base": base["texts"][i],
            "sft": sft["texts"][i],
            "base_gold": gold(base, i),
            "sft_gold": gold(sft, i),
        }
        for i in rows
    ]


def side_by_side_text(step: int, base: dict, now: dict, k: int) -> str:
    lines = [f"# step {step}: greedy answers, base → now (gold)"]
    for row in side_by_side(base, now, k):
        gold = row["base_gold"] is not None
        gold = f" ({row['base_gold']:.2f} → {row['sft_gold']:.2f})" if gold else ""
        lines += [
            f"Q: {row['prompt']}{gold}",
            f"  base: {row['base']!r}",
            f"  now:  {row['sft']!r}",
        ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ summary


def run_facts(result, val_loss, train_sets, n_truncated: int, start_time: float) -> dict:
    """Validation loss, steps, data counts and wall time for summary.json."""
    # a resumed run that had already finished evaluates nothing inside fit()
    last_eval = result.last_eval or val_loss(result.state.params)
    return {
        "val_loss": last_eval["loss"],
        "val_loss_tasks": last_eval.get("loss_tasks", math.nan),
        "steps": result.step,
        "train_conversations": {k: len(v) for k, v in train_sets.items()},
        "truncated_conversations": n_truncated,
        "wall_time_s": time.perf_counter() - start_time,
    }


def _ci(x) -> dict:
    mean, lo, hi = rl_math.bootstrap_mean_ci(x)
    return {"mean": mean, "lo": lo, "hi": hi}


def _cell(text) -> str:
    return "—" if text is None else str(text).replace("|", "\\|").replace("\n", " ") or "(empty)"


def write_summary(workdir: str, base: dict, sft: dict, extra: dict, k: int) -> dict:
    """summary.json (base vs SFT gold with 95% bootstrap intervals, paired difference,
    terminated shares, per-family gold, validation loss, wall time) and answers.md."""
    n = base["n_held"] or len(base["texts"])
    summary = {"n_prompts": base["n_held"]}
    if base["gold"] is not None:
        diff = rl_math.bootstrap_diff_ci(sft["gold"], base["gold"])
        summary.update(
            base_gold=_ci(base["gold"]),
            sft_gold=_ci(sft["gold"]),
            gold_diff={"mean": diff[0], "lo": diff[1], "hi": diff[2]},
        )
    summary.update(
        base_terminated=float(base["terminated"][:n].mean()),
        sft_terminated=float(sft["terminated"][:n].mean()),
    )
    if base["gold"] is not None:
        by_family = lambda a: {k_: v for k_, v in GoldEval.metrics(a).items()
                               if k_.startswith("gold_")}
        summary.update(base_by_family=by_family(base), sft_by_family=by_family(sft))
    summary.update(extra)
    rows = side_by_side(base, sft, k)
    table = ["| prompt | base | gold | SFT | gold |", "|---|---|---:|---|---:|"]
    for r in rows:
        golds = [_cell(None if g is None else f"{g:.2f}") for g in (r["base_gold"], r["sft_gold"])]
        table.append(
            f"| {_cell(r['prompt'])} | {_cell(r['base'])} | {golds[0]} | "
            f"{_cell(r['sft'])} | {golds[1]} |"
        )
    atomic_write(
        os.path.join(workdir, "answers.md"),
        "# Greedy answers on held-out task prompts and open prompts: base vs SFT\n\n"
        + "\n".join(table)
        + "\n",
    )
    write_json(os.path.join(workdir, "summary.json"), summary)  # last: marks the stage done
    print_headline(summary, rows)
    return summary


def print_headline(summary: dict, rows: list[dict], shown: int = 5) -> None:
    if "gold_diff" in summary:
        b, s, d = summary["base_gold"], summary["sft_gold"], summary["gold_diff"]
        print(
            f"held-out task prompts (n={summary['n_prompts']}, greedy), mean gold [95% CI]: "
            f"base {b['mean']:.3f} [{b['lo']:.3f}, {b['hi']:.3f}] → SFT {s['mean']:.3f} "
            f"[{s['lo']:.3f}, {s['hi']:.3f}]; difference {d['mean']:+.3f} "
            f"[{d['lo']:+.3f}, {d['hi']:+.3f}]"
        )
    print(
        f"replies that end their turn: base {summary['base_terminated']:.0%} → SFT "
        f"{summary['sft_terminated']:.0%}; validation loss {summary['val_loss']:.3f} "
        f"nats/token; wall time {summary['wall_time_s']:.0f} s"
    )
    held = rows[: len(rows) - len(CHAT_PROMPTS)]
    for r in held[: shown - 2] + rows[len(held):][:2]:
        print(f"Q: {r['prompt']}\n  base: {r['base']!r}\n  SFT:  {r['sft']!r}")

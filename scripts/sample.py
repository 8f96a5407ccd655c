"""Sample replies to a file of prompts, with the gold score where a prompt is a synthetic task.

    python -m scripts.sample --workdir runs/sft_tiny --prompts prompts.jsonl --out out.jsonl
    python -m scripts.sample --workdir runs/sft_tiny --prompts p.jsonl --out o.jsonl --greedy

Input rows (JSONL): {"prompt": "What is 3 plus 4?"} or {"messages": [...]} ending with a user
message (data/chat.py rules). Other keys are kept. Each output row is the input row plus
  "response"    the reply text,
  "terminated"  whether the reply closed its turn (false: cut at --max_new_tokens),
  "gold"        data.tasks.gold of the reply when the last user message is a task prompt
                (data.tasks.gold_for_prompt recognises it), else null.
On several processes (README "Running on several hosts") every process reads the prompts and
holds every reply; process 0 writes --out. Malformed rows are reported as file:line and
skipped; more than --max_bad_fraction of them stop the run (data/dialogues.py read_jsonl).
Prompts go through train.generation.ChatGenerator in fixed-size batches.
"""

import argparse
import json

import jax
import numpy as np

from data import chat
from data import dialogues as dialogues_lib
from data import tasks as tasks_lib
from scripts.chat import load_run
from train import cli
from train.generation import ChatGenerator
from train.metrics import atomic_write


def parse_prompt_row(obj, where: str):
    """(row, messages) of one input row; ValueError naming `where` when malformed."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: row must be a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        chat.validate_messages(obj["messages"], where, final="user")
        return obj, obj["messages"]
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            raise ValueError(f"{where}: 'prompt' must be a non-empty string")
        return obj, [{"role": "user", "content": obj["prompt"]}]
    raise ValueError(
        f"{where}: row needs a 'prompt' string or a 'messages' list (keys: {sorted(obj)[:8]})"
    )


def read_prompts(path: str, max_bad_fraction: float = 0.01) -> list:
    return dialogues_lib.read_jsonl(path, parse_prompt_row, max_bad_fraction)


def gold_of(messages, response: str, terminated: bool) -> float | None:
    task = tasks_lib.gold_for_prompt(messages[-1]["content"])
    return None if task is None else tasks_lib.gold(task, response, terminated)


def sample_rows(loaded, items, args) -> list[dict]:
    """Output rows (input row + response, terminated, gold) for (row, messages) items."""
    generator = ChatGenerator(
        loaded.setup,
        loaded.tok,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
        batch_size=args.batch_size,
    )
    out = generator.generate(loaded.params, [m for _, m in items], jax.random.key(args.seed))
    rows = []
    for (row, messages), text, term in zip(items, out.texts, out.terminated, strict=True):
        rows.append(
            {
                **row,
                "response": text,
                "terminated": bool(term),
                "gold": gold_of(messages, text, bool(term)),
            }
        )
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="run folder (config.json, ckpt/)")
    p.add_argument("--prompts", required=True, help="input JSONL")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--config", default=None, help="experiment file instead of config.json")
    p.add_argument("--tokenizer", default=None, help="override config data.tokenizer")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_bad_fraction", type=float, default=0.01)
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    items = read_prompts(args.prompts, args.max_bad_fraction)
    if not items:
        raise ValueError(f"{args.prompts}: no prompts")
    loaded = load_run(args.workdir, args.config, args.tokenizer)
    rows = sample_rows(loaded, items, args)
    # every process sampled every row (gathered); process 0 writes the file, once
    atomic_write(args.out, "".join(json.dumps(row) + "\n" for row in rows))
    golds = [r["gold"] for r in rows if r["gold"] is not None]
    mean_gold = f", mean gold {np.mean(golds):.3f} over {len(golds)} task prompts" if golds else ""
    print(
        f"{args.out}: {len(rows)} replies, {np.mean([r['terminated'] for r in rows]):.0%} "
        f"terminated{mean_gold}"
    )
    return rows


if __name__ == "__main__":
    cli.run_argparse(main, multiprocess=True)

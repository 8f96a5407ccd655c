"""Worlds: where a stage's prompts come from and whether a gold scorer judges the replies.

    world = make_world({"train": config.prompts, "heldout": config.eval}, words)
    prompts = world.prompts("heldout")               # [Prompt]
    ids = render_prompts(tok, prompts, max_new_tokens, max_seq_len, "config.eval")
    gold = world.gold(prompts, texts, terminated)    # np.ndarray, or None: no gold scorer

Collection, PPO, SFT's answers and the pipeline's evaluation read prompts only through this
seam. Two worlds:
  tasks   the synthetic assistant world (data/tasks.py), the embedded default: seeded task
          prompts of a split, the programmatic gold scorer, and the synthetic annotator
          (data/preferences.py) that labels pairs from gold;
  files   the user's prompt files, no gold: replies are judged by the reward model (score,
          win rate against the SFT policy, KL, length, share ended) and pairs by a person.
A split's spec is a config section whose `source` is "tasks" (with families, n_prompts, seed,
difficulty), "local:<file.jsonl>" (a prompts file) or "" (no prompts for that split). One
stage's splits come from one world: mixing tasks and files is refused.

Prompts file: JSONL, one prompt per line, either {"prompt": "text"} (one user turn) or
{"messages": [..., {"role": "user", ...}]} (a conversation ending with the user's turn); an
optional "group" string names a subset for per-group figures. Every malformed row is an error
naming file:line (no threshold: a prompt set is small and hand-made).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from data import chat, demonstrators, dialogues
from data import tasks as tasks_lib

SPLITS = ("train", "heldout")
LOCAL = "local:"


@dataclasses.dataclass(frozen=True)
class Prompt:
    messages: list  # chat messages ending with the user's turn
    where: str  # "file.jsonl:12" or "tasks heldout #3": named in errors
    group: str = ""  # task family, or the file row's "group"
    task: Any = None  # the synthetic world's data.tasks.Task (the gold scorer's key)

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


class TaskWorld:
    """The synthetic assistant world: task prompts, gold scorer, synthetic annotator."""

    name = "tasks"
    has_gold = True
    labeller = "synthetic preferences from a programmatic labeller (gold scorer)"

    def __init__(self, specs: dict, words=None):
        self.specs, self.words = specs, words

    def prompts(self, split: str) -> list[Prompt]:
        spec = self.specs.get(split)
        if spec is None or not spec.source:
            return []
        families = tuple(f for f in spec.families.split(",") if f) or tasks_lib.FAMILIES
        task_list = tasks_lib.make_tasks(families, spec.n_prompts, seed=spec.seed, split=split,
                                         difficulty=spec.difficulty, words=self.words)
        return [Prompt(tasks_lib.prompt_messages(t), f"tasks {split} #{i}", t.family, t)
                for i, t in enumerate(task_list)]

    def gold(self, prompts, texts, terminated) -> np.ndarray:
        return np.array([tasks_lib.gold(p.task, x, bool(e))
                         for p, x, e in zip(prompts, texts, terminated, strict=True)], np.float64)

    def details(self, prompts, texts) -> dict:
        """Per-reply figures only this world knows: correctness (gold without its style
        factors) and chatty (written like the chatty demonstrator)."""
        return {"correctness": [tasks_lib.correctness(p.task, x)
                                for p, x in zip(prompts, texts, strict=True)],
                "chatty": [float(demonstrators.is_chatty(x)) for x in texts]}


class FileWorld:
    """The user's prompt files: no gold, replies judged by the reward model."""

    name = "files"
    has_gold = False
    labeller = "no gold scorer: replies judged by the reward model"

    def __init__(self, specs: dict):
        self.paths = {s: spec.source[len(LOCAL):] for s, spec in specs.items() if spec.source}

    def prompts(self, split: str) -> list[Prompt]:
        path = self.paths.get(split)
        return read_prompts(path) if path else []

    def gold(self, prompts, texts, terminated) -> None:
        return None

    def details(self, prompts, texts) -> dict:
        return {}


def make_world(specs: dict, words=None, key: str = "config"):
    """The world of a stage's splits: {split: section with `source`} (see the docstring)."""
    sources = {s: str(spec.source) for s, spec in specs.items()}
    for split, source in sources.items():
        if source not in ("", "tasks") and not source.startswith(LOCAL):
            raise ValueError(f"{key}: {split} prompts source={source!r}: expected 'tasks', "
                             "'local:<prompts.jsonl>' or '' (none)")
        if source.startswith(LOCAL) and not os.path.isfile(source[len(LOCAL):]):
            raise FileNotFoundError(f"{key}: {split} prompts {source}: no such file")
    kinds = {"tasks" if s == "tasks" else "files" for s in sources.values() if s}
    if len(kinds) > 1:
        raise ValueError(f"{key}: prompt sources {sources} mix the synthetic tasks and prompt "
                         "files; one stage reads one world")
    # no prompts at all: nothing to score, so no gold either
    return TaskWorld(specs, words) if kinds == {"tasks"} else FileWorld(specs)


def parse_prompt(obj, where: str) -> Prompt:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: row must be a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        messages = obj["messages"]
        chat.validate_messages(messages, where, final="user")
    elif "prompt" in obj:
        if not isinstance(obj["prompt"], str):
            raise ValueError(f"{where}: 'prompt' must be a string, got "
                             f"{type(obj['prompt']).__name__}")
        messages = [{"role": "user", "content": obj["prompt"]}]
    else:
        raise ValueError(f"{where}: row has neither 'prompt' nor 'messages' "
                         f"(keys: {sorted(obj)[:8]})")
    if not messages[-1]["content"].strip():
        raise ValueError(f"{where}: the prompt (last user turn) is empty")
    group = obj.get("group", "")
    if not isinstance(group, str):
        raise ValueError(f"{where}: 'group' must be a string")
    return Prompt(messages, where, group)


def read_prompts(path: str) -> list[Prompt]:
    prompts = dialogues.read_jsonl(path, parse_prompt, max_bad_fraction=0.0)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def render_prompts(tok, prompts, max_new_tokens: int, max_seq_len: int, key: str) -> list:
    """Prompt ids in the chat format; a prompt that leaves no room for max_new_tokens of reply
    is an error naming its row (never silently cut: the model would answer another question)."""
    out = []
    for p in prompts:
        ids = chat.render_prompt(tok, p.messages)
        if len(ids) + max_new_tokens > max_seq_len:
            raise ValueError(f"{p.where}: the prompt is {len(ids)} tokens; with {key} "
                             f"max_new_tokens={max_new_tokens} it needs "
                             f"{len(ids) + max_new_tokens} > model.max_seq_len={max_seq_len}")
        out.append(ids)
    return out

"""Preference pairs: the JSONL format, its readers and writer, and the two annotators.

Row format (one JSON object per line), what the collector writes and the reward model reads:

    {"prompt": [messages ending with a user turn], "chosen": str, "rejected": str,
     "annotator": str, "meta": {...}}

The readers also accept
  - the HH form: {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: A", "rejected": "...same
    prompt...\\n\\nAssistant: B"}; the prompt is what precedes the last "\\n\\nAssistant:" of
    each, and both must share it;
  - plain strings: {"prompt": str, "chosen": str, "rejected": str} (a one-turn user prompt).
"annotator" defaults to "unknown", "meta" to {} (the input form is recorded in meta["format"]).
Malformed rows follow the bad-row policy of data/dialogues.py (path:line, threshold).

Annotators. The synthetic one is a noisy Bradley-Terry rater over the gold scorer of
data/tasks.py (Gao et al. 2022): synthetic preferences from a programmatic labeller, never
human data. The human one asks a person at the terminal; both give labels in the same terms.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from data import chat, dialogues

LABELS = ("a", "b", "tie")


@dataclasses.dataclass(frozen=True)
class Preference:
    prompt: list  # messages, ending with a user turn
    chosen: str
    rejected: str
    annotator: str = "unknown"
    meta: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _hh_split(text, where: str, field: str) -> tuple[str, str]:
    if not isinstance(text, str):
        raise ValueError(f"{where}: {field!r} must be a string, got {type(text).__name__}")
    i = text.rfind("\n\nAssistant:")
    if i < 0:
        raise ValueError(f"{where}: {field!r} has no '\\n\\nAssistant:' turn")
    return text[:i], text[i + len("\n\nAssistant:"):].strip()


def parse_preference(obj, where: str) -> Preference:
    """A Preference from one row in any of the three accepted forms; ValueError otherwise."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: row must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("chosen", "rejected") if k not in obj]
    if missing:
        raise ValueError(f"{where}: missing {missing} (keys: {sorted(obj)[:8]})")
    annotator, meta = obj.get("annotator", "unknown"), dict(obj.get("meta") or {})
    if not isinstance(annotator, str):
        raise ValueError(f"{where}: 'annotator' must be a string")
    prompt = obj.get("prompt")
    if prompt is None:  # HH form: two full dialogues sharing the prompt
        prompt_c, chosen = _hh_split(obj["chosen"], where, "chosen")
        prompt_r, rejected = _hh_split(obj["rejected"], where, "rejected")
        if prompt_c != prompt_r:
            raise ValueError(f"{where}: 'chosen' and 'rejected' do not share a prompt")
        prompt = dialogues.parse_hh(prompt_c, where, final="user")
        meta.setdefault("format", "hh")
    else:
        chosen, rejected = obj["chosen"], obj["rejected"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
            meta.setdefault("format", "plain")
        chat.validate_messages(prompt, where, final="user")
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str):
            raise ValueError(f"{where}: {name!r} must be a string, got {type(text).__name__}")
        # a response is rendered as the assistant turn after the prompt
        chat.validate_messages(prompt + [{"role": "assistant", "content": text}], where)
    return Preference(prompt, chosen, rejected, annotator, meta)


def read_preferences(path, max_bad_fraction: float = 0.01) -> list[Preference]:
    """All preference pairs of a JSONL file (any of the three forms, mixed rows allowed)."""
    return dialogues.read_jsonl(path, parse_preference, max_bad_fraction)


class PreferenceWriter:
    """Appends Preference rows one at a time, each flushed and fsynced, so a person labelling
    at the terminal loses nothing when the session ends abruptly. If the file ends in a torn
    line (a crash mid-write), a newline is added first so that line stays one bad row."""

    def __init__(self, path):
        self.path = str(path)
        torn = False
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held across writes)
        if torn:
            self._f.write("\n")

    def write(self, pref: Preference) -> None:
        self._f.write(json.dumps(pref.to_json(), ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def synthetic_label(gold_a: float, gold_b: float, tau: float, eps: float, rng,
                    *, identical: bool = False) -> str:
    """Noisy Bradley-Terry rater over gold scores: "a", "b" or "tie".

        P(A ≻ B) = σ((g_a − g_b) / τ), then the label is flipped with probability ε,
        so P(label = a) = (1 − ε)·σ((g_a − g_b)/τ) + ε·(1 − σ((g_a − g_b)/τ)).

    Ties: identical responses (identical=True) give "tie" — there is nothing to prefer and
    the collector skips the pair. Equal gold with different responses still goes through the
    Bradley-Terry coin (P = 1/2), as a rater forced to choose would. rng: anything with
    .random() in [0, 1) (numpy Generator or random.Random).
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1], got {eps}")
    if identical:
        return "tie"
    prefers_a = rng.random() < _sigmoid((gold_a - gold_b) / tau)
    if rng.random() < eps:
        prefers_a = not prefers_a
    return "a" if prefers_a else "b"


class HumanAnnotator:
    """A person at the terminal compares two answers shown in random order (so position
    does not leak which sample is which); keys: a / b / t(ie) / s(kip) / q(uit).

    label() returns "a" | "b" | "tie" | "skip" | "quit" in terms of the ORIGINAL order of
    its arguments. End of input counts as quit. Writing the label is the caller's job
    (PreferenceWriter), one row per answer, so a session can stop and resume.
    """

    KEYS = {"a": "a", "b": "b", "t": "tie", "tie": "tie", "s": "skip", "skip": "skip",
            "q": "quit", "quit": "quit"}

    def __init__(self, in_stream, out_stream, rng):
        self.inp, self.out, self.rng = in_stream, out_stream, rng

    def _show(self, prompt, first: str, second: str) -> None:
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        lines = ["", "=" * 60]
        lines += [f"{m['role'].upper()}: {m['content']}" for m in prompt]
        lines += ["-" * 60, f"[A] {first}", "-" * 60, f"[B] {second}", "-" * 60]
        self.out.write("\n".join(lines) + "\n")

    def label(self, prompt, response_a: str, response_b: str) -> str:
        swap = self.rng.random() < 0.5
        shown = (response_b, response_a) if swap else (response_a, response_b)
        self._show(prompt, *shown)
        while True:
            self.out.write("Better answer? [a]/[b], [t]ie, [s]kip, [q]uit: ")
            self.out.flush()
            line = self.inp.readline()
            if not line:
                return "quit"
            choice = self.KEYS.get(line.strip().lower())
            if choice is None:
                self.out.write(f"unknown key {line.strip()!r}\n")
                continue
            if swap and choice in ("a", "b"):
                return "b" if choice == "a" else "a"
            return choice

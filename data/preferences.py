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
    if chosen == rejected and meta.get("chosen_terminated") == meta.get("rejected_terminated"):
        raise ValueError(f"{where}: 'chosen' equals 'rejected' (nothing to prefer)")
    return Preference(prompt, chosen, rejected, annotator, meta)


@dataclasses.dataclass(frozen=True)
class Rating:
    """One reply rated on the seed article's scale: 0 if the answer is off, 1 if perfect."""

    prompt: list  # messages, ending with a user turn
    response: str
    rating: float  # in [0, 1]
    annotator: str = "unknown"
    meta: dict = dataclasses.field(default_factory=dict)  # "terminated": the reply ended

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def parse_rating(obj, where: str) -> Rating:
    """{"prompt": str | messages, "response": str, "rating": number in [0, 1], "annotator"?,
    "meta"?}; ValueError naming `where` otherwise."""
    missing = [k for k in ("prompt", "response", "rating") if k not in obj]
    if missing:
        raise ValueError(f"{where}: a rating row needs {missing} (keys: {sorted(obj)[:8]})")
    prompt, response, rating = obj["prompt"], obj["response"], obj["rating"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    chat.validate_messages(prompt, where, final="user")
    if not isinstance(response, str):
        raise ValueError(f"{where}: 'response' must be a string, got {type(response).__name__}")
    if isinstance(rating, bool) or not isinstance(rating, int | float) or not 0 <= rating <= 1:
        raise ValueError(f"{where}: 'rating' must be a number in [0, 1] (0 = off, 1 = "
                         f"perfect), got {rating!r}")
    return Rating(prompt, response, float(rating), str(obj.get("annotator", "unknown")),
                  dict(obj.get("meta") or {}, where=where))


def pairs_from_ratings(ratings) -> list[Preference]:
    """Bradley-Terry pairs from ratings, by one rule: two replies to the same prompt (the same
    messages) with different ratings make a pair, the higher-rated one chosen. Equal ratings
    give no pair; the same reply rated twice differently (a conflict) gives none either. Pairs
    keep the prompts' first-seen order and, within a prompt, the order the replies were rated."""
    by_prompt: dict[str, list[Rating]] = {}
    for r in ratings:
        by_prompt.setdefault(json.dumps(r.prompt, sort_keys=True), []).append(r)
    pairs = []
    for group in by_prompt.values():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                same = a.response == b.response and _ended(a) == _ended(b)
                if a.rating == b.rating or same:
                    continue
                hi, lo = (a, b) if a.rating > b.rating else (b, a)
                meta = {"format": "ratings", "rating_chosen": hi.rating,
                        "rating_rejected": lo.rating, "chosen_terminated": _ended(hi),
                        "rejected_terminated": _ended(lo),
                        "rated": [hi.meta.get("where"), lo.meta.get("where")]}
                if hi.meta.get("gold") is not None:  # collected in the synthetic world
                    meta["gold_chosen"], meta["gold_rejected"] = hi.meta["gold"], lo.meta["gold"]
                annotator = hi.annotator if hi.annotator == lo.annotator else "mixed"
                pairs.append(Preference(hi.prompt, hi.response, lo.response, annotator, meta))
    return pairs


def _ended(r: Rating) -> bool:
    return bool(r.meta.get("terminated", True))


def _parse_feedback(obj, where: str):
    if isinstance(obj, dict) and "rating" in obj:
        return parse_rating(obj, where)
    return parse_preference(obj, where)


def read_preferences(path, max_bad_fraction: float = 0.01) -> list[Preference]:
    """All preference pairs of a JSONL file: pair rows in any of the three forms, and rating
    rows ({"prompt", "response", "rating"}) turned into pairs by pairs_from_ratings (within the
    file); mixed rows allowed."""
    rows = dialogues.read_jsonl(path, _parse_feedback, max_bad_fraction)
    ratings = [r for r in rows if isinstance(r, Rating)]
    return [r for r in rows if isinstance(r, Preference)] + pairs_from_ratings(ratings)


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
    its arguments. rate() shows one answer and returns its rating in [0, 1] (0 if the answer
    is off, 1 if perfect; 0.5 and any value between allowed), "skip" or "quit". End of input
    counts as quit. Writing the label is the caller's job
    (PreferenceWriter), one row per answer, so a session can stop and resume.
    """

    KEYS = {"a": "a", "b": "b", "t": "tie", "tie": "tie", "s": "skip", "skip": "skip",
            "q": "quit", "quit": "quit"}

    def __init__(self, in_stream, out_stream, rng):
        self.inp, self.out, self.rng = in_stream, out_stream, rng

    def _show(self, prompt, *replies: tuple[str, str]) -> None:
        """The conversation so far, then each (tag, reply) between rules."""
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        lines = ["", "=" * 60]
        lines += [f"{m['role'].upper()}: {m['content']}" for m in prompt]
        for tag, text in replies:
            lines += ["-" * 60, f"[{tag}] {text}"]
        self.out.write("\n".join(lines + ["-" * 60]) + "\n")

    def _ask(self, question: str, parse):
        """Asks until parse(answer) is not None; end of input is "quit"."""
        while True:
            self.out.write(question)
            self.out.flush()
            line = self.inp.readline()
            if not line:
                return "quit"
            answer = parse(line.strip())
            if answer is not None:
                return answer

    def label(self, prompt, response_a: str, response_b: str) -> str:
        swap = self.rng.random() < 0.5
        shown = (response_b, response_a) if swap else (response_a, response_b)
        self._show(prompt, ("A", shown[0]), ("B", shown[1]))
        choice = self._ask("Better answer? [a]/[b], [t]ie, [s]kip, [q]uit: ", self._key)
        if swap and choice in ("a", "b"):
            return "b" if choice == "a" else "a"
        return choice

    def rate(self, prompt, response: str) -> float | str:
        self._show(prompt, ("reply", response))
        return self._ask("Rating? 0 = off ... 1 = perfect (e.g. 0, 0.5, 1), [s]kip, [q]uit: ",
                         self._rating)

    def _key(self, text: str) -> str | None:
        choice = self.KEYS.get(text.lower())
        if choice is None:
            self.out.write(f"unknown key {text!r}\n")
        return choice

    def _rating(self, text: str) -> float | str | None:
        choice = self.KEYS.get(text.lower())
        if choice in ("skip", "quit"):
            return choice
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if 0.0 <= value <= 1.0:
            return value
        self.out.write(f"not a rating in [0, 1]: {text!r}\n")
        return None

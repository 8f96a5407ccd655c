"""Synthetic assistant tasks with a programmatic gold scorer (the setup of Gao et al. 2022,
"Scaling Laws for Reward Model Overoptimization": a program plays the human).

Families (FAMILIES): add, subtract (never negative), compare (which is larger / smaller),
reverse (spell a word backwards), count_letter, number_words (write a number in words),
sort (ascending), uppercase. Each has a few prompt phrasings and one reference reply, a short
natural sentence such as "The sum of 12 and 7 is 19.". A Task carries its `spec`: the problem
values under their template slot names (a, b, n, w, c, nums, ask) plus "target", the answer.

Difficulty (LEVELS) sets the number range, word length and list length. Words come from the
`words` argument (the caller passes common alphabetic words of its corpus); FALLBACK_WORDS
serve tests. Splits: a problem's canonical key (family + values, order-free where order does
not matter: 12+7 and 7+12 are one problem) is hashed; a fraction HELDOUT_FRACTION of keys is
held out. Every phrasing of a problem lands in the same split, so train and held-out never
share a prompt, for any n and seed.

Reward design — gold(task, response, terminated) in [0, 1]:

    gold = max_i [c(s_i) · BURIED^i] · min(1, sqrt(L_allow / L)) · (1 or UNTERMINATED)

  s_i     the i-th sentence of the reply (first MAX_SENTENCES): an answer buried behind other
          sentences loses a factor BURIED per sentence before it;
  c       correctness of one sentence, 1 only for the exact answer; an inexact answer earns at
          most NEAR, decaying with its distance from the target:
            numbers (add, subtract, count_letter): x = last number of the sentence,
                c = NEAR · exp(−3·|x − y| / max(|y|, 5))
            compare: x = the number said to be larger/smaller (else the last number);
                1 if x is the target, 0 if it is the other operand, else half the numeric c
            strings (reverse [case-free], uppercase, number_words [hyphens, "and" ignored]):
                x = last quoted string (else the last word / the text after " is "),
                c = NEAR · sim³, sim = 1 − Levenshtein(x, y) / max(|x|, |y|);
                number_words takes the better of that and the numeric c of the value the
                words spell ("four" for 5 is close in value, far in spelling)
            sort: x = the numbers after the last ":" (else all numbers of the sentence),
                c = NEAR · LCS(x, y) / max(|x|, |y|)
  L       length of the reply in characters, L_allow = 1.5·len(reference) + 10: rambling and
          extra text lose sqrt(L_allow / L);
  an unterminated reply (no <|end|> before the length cap) is worth UNTERMINATED of itself.
Unrelated text has no usable answer in it and scores about 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import re
from collections.abc import Callable, Sequence

from data import text_match as tm

HELDOUT_FRACTION = 0.2
NEAR, BURIED, UNTERMINATED, MAX_SENTENCES = 0.6, 0.8, 0.5, 8
_MAX_TRIES = 2000


@dataclasses.dataclass(frozen=True)
class Task:
    family: str
    prompt: str
    answer: str  # the reference assistant reply
    spec: dict  # problem values + "target" (JSON-serialisable; makes Task unhashable)


@dataclasses.dataclass(frozen=True)
class Level:
    max_number: int
    word_len: tuple[int, int]
    list_len: int


LEVELS = {1: Level(20, (3, 5), 3), 2: Level(100, (3, 7), 4), 3: Level(1000, (4, 9), 5),
          4: Level(10000, (5, 12), 6)}

FALLBACK_WORDS = (
    "cat", "dog", "sun", "map", "cup", "red", "box", "hat", "pen", "bird", "fish", "tree",
    "book", "moon", "star", "rain", "road", "milk", "door", "frog", "apple", "house", "water",
    "light", "music", "river", "table", "chair", "green", "happy", "bread", "cloud", "smile",
    "plant", "stone", "garden", "window", "yellow", "orange", "summer", "winter", "friend",
    "little", "number", "letter", "family", "silver", "planet", "picture", "morning",
    "kitchen", "teacher", "brother", "library", "weather", "holiday", "elephant", "mountain",
    "sandwich", "question", "tomorrow", "computer", "chocolate", "butterfly", "basketball",
    "adventure", "wonderful",
)

# ---------------------------------------------------------------- number words


_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_WORD_VALUE = {w: i for i, w in enumerate(_ONES)} | {w: 10 * i for i, w in enumerate(_TENS) if w}


def number_to_words(n: int) -> str:
    """English words for 0 <= n < 1,000,000, e.g. 123 -> "one hundred twenty-three"."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_to_words covers 0..999999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")
    if n < 1000:
        head, rest = f"{_ONES[n // 100]} hundred", n % 100
    else:
        head, rest = f"{number_to_words(n // 1000)} thousand", n % 1000
    return head + (f" {number_to_words(rest)}" if rest else "")


# ---------------------------------------------------------------- scoring pieces

def _near_number(x: int, y: int) -> float:
    return 1.0 if x == y else NEAR * math.exp(-3.0 * abs(x - y) / max(abs(y), 5))


def _near_string(x: str, y: str) -> float:
    if x == y:
        return 1.0
    sim = 1.0 - tm.levenshtein(x, y) / max(len(x), len(y), 1)
    return NEAR * sim**3


def _score_number(spec, s: str) -> float:
    nums = tm.numbers(s)
    return _near_number(nums[-1], spec["target"]) if nums else 0.0


_LARGER = r"(?:larger|bigger|greater|higher)"
_SMALLER = r"(?:smaller|less|lower)"


def _score_compare(spec, s: str) -> float:
    group = _LARGER if spec["ask"] == "larger" else _SMALLER
    m = (re.search(rf"(-?\d+)\s+is\s+(?:the\s+)?{group}\b", s)
         or re.search(rf"\b{group}\s+(?:number\s+|one\s+)?is\s+(-?\d+)", s))
    if m:
        x = int(m.group(1))
    else:  # "13 is smaller than 27" answers "larger?" with its last number
        nums = tm.numbers(s)
        if not nums:
            return 0.0
        x = nums[-1]
    other = spec["a"] + spec["b"] - spec["target"]
    if x == spec["target"]:
        return 1.0
    return 0.0 if x == other else 0.5 * _near_number(x, spec["target"])


def _score_reverse(spec, s: str) -> float:
    return _near_string(tm.last_quoted_or(s, tm.last_word).lower(), spec["target"])


def _score_uppercase(spec, s: str) -> float:
    return _near_string(tm.last_quoted_or(s, tm.last_word), spec["target"])


def words_to_number(text: str) -> int | None:
    """Inverse of number_to_words, lenient about hyphens and "and"; None if not number words."""
    total, current, words = 0, 0, tm.norm_words(text).split()
    for w in words:
        if w in _WORD_VALUE:
            current += _WORD_VALUE[w]
        elif w == "hundred":
            current *= 100
        elif w == "thousand":
            total, current = total + current * 1000, 0
        else:
            return None
    return total + current if words else None


def _score_words(spec, s: str) -> float:
    x, y = tm.norm_words(tm.last_quoted_or(s, tm.after_is)), tm.norm_words(spec["target"])
    if x == y:
        return 1.0
    # "four" for 5 is a near miss in value though far in spelling: take the better credit
    value = words_to_number(x)
    by_value = 0.0 if value is None else min(NEAR, _near_number(value, spec["n"]))
    return max(_near_string(x, y), by_value)


def _score_sort(spec, s: str) -> float:
    x, y = tm.numbers(s.rsplit(":", 1)[-1]), spec["target"]
    if x == y:
        return 1.0
    return NEAR * tm.lcs(x, y) / max(len(x), len(y))


# ---------------------------------------------------------------- families


def _two_numbers(rng, lv, ordered=False, distinct=False):
    while True:
        a, b = rng.randint(0, lv.max_number), rng.randint(0, lv.max_number)
        if not (distinct and a == b):
            return (max(a, b), min(a, b)) if ordered else (a, b)


def _word(rng, words):
    return rng.choice(words)


def _sample_count(rng, lv, words):
    w = _word(rng, words)
    absent = [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in w]
    # mostly a letter of the word; sometimes one it lacks (answer 0)
    c = rng.choice(absent) if absent and rng.random() < 0.25 else rng.choice(w)
    return {"w": w, "c": c}


def _sample_compare(rng, lv, words):
    a, b = _two_numbers(rng, lv, distinct=True)
    return {"a": a, "b": b, "ask": rng.choice(("larger", "smaller"))}


def _times(n: int) -> str:
    return "time" if n == 1 else "times"


@dataclasses.dataclass(frozen=True)
class _Family:
    templates: tuple[str, ...]
    sample: Callable  # (rng, level, words) -> slot values
    target: Callable  # values -> answer value
    answer: Callable  # (values, target) -> reference reply
    key: Callable  # values -> canonical problem string (for the split)
    score: Callable  # (spec, sentence) -> correctness in [0, 1]


_F = {
    "add": _Family(
        ("What is {a} plus {b}?", "What is the sum of {a} and {b}?", "Add {a} and {b}.",
         "Can you add {a} and {b} for me?"),
        lambda rng, lv, w: dict(zip("ab", _two_numbers(rng, lv), strict=True)),
        lambda v: v["a"] + v["b"],
        lambda v, t: f"The sum of {v['a']} and {v['b']} is {t}.",
        lambda v: f"{min(v['a'], v['b'])},{max(v['a'], v['b'])}",
        _score_number),
    "subtract": _Family(
        ("What is {a} minus {b}?", "Subtract {b} from {a}.",
         "What do you get if you take {b} away from {a}?"),
        lambda rng, lv, w: dict(zip("ab", _two_numbers(rng, lv, ordered=True), strict=True)),
        lambda v: v["a"] - v["b"],
        lambda v, t: f"{v['a']} minus {v['b']} is {t}.",
        lambda v: f"{v['a']},{v['b']}",
        _score_number),
    "compare": _Family(
        ("Which is {ask}, {a} or {b}?", "Which number is {ask}: {a} or {b}?",
         "Of {a} and {b}, which one is {ask}?"),
        _sample_compare,
        lambda v: (max if v["ask"] == "larger" else min)(v["a"], v["b"]),
        lambda v, t: f"{t} is {v['ask']} than {v['a'] + v['b'] - t}.",
        lambda v: f"{min(v['a'], v['b'])},{max(v['a'], v['b'])}",
        _score_compare),
    "reverse": _Family(
        ('Spell "{w}" backwards.', 'What is "{w}" spelled backwards?',
         'Can you write the word "{w}" in reverse?'),
        lambda rng, lv, w: {"w": _word(rng, w)},
        lambda v: v["w"][::-1],
        lambda v, t: f'The word "{v["w"]}" spelled backwards is "{t}".',
        lambda v: v["w"],
        _score_reverse),
    "count_letter": _Family(
        ('How many times does the letter "{c}" appear in "{w}"?',
         'Count the letter "{c}" in the word "{w}".', 'How many "{c}" are there in "{w}"?'),
        _sample_count,
        lambda v: v["w"].count(v["c"]),
        lambda v, t: f'The letter "{v["c"]}" appears {t} {_times(t)} in "{v["w"]}".',
        lambda v: f"{v['w']},{v['c']}",
        _score_number),
    "number_words": _Family(
        ("Write {n} in words.", "How do you spell the number {n}?",
         "What is {n} written out in words?"),
        lambda rng, lv, w: {"n": rng.randint(0, lv.max_number)},
        lambda v: number_to_words(v["n"]),
        lambda v, t: f'The number {v["n"]} in words is "{t}".',
        lambda v: str(v["n"]),
        _score_words),
    "sort": _Family(
        ("Sort these numbers from smallest to largest: {nums}.",
         "Put {nums} in ascending order.", "Can you sort {nums} in increasing order?"),
        lambda rng, lv, w: {"nums": rng.sample(range(lv.max_number + 1), lv.list_len)},
        lambda v: sorted(v["nums"]),
        lambda v, t: f"Sorted from smallest to largest: {', '.join(map(str, t))}.",
        lambda v: ",".join(map(str, sorted(v["nums"]))),
        _score_sort),
    "uppercase": _Family(
        ('Write "{w}" in uppercase.', 'What is "{w}" in capital letters?',
         'Convert the word "{w}" to uppercase.'),
        lambda rng, lv, w: {"w": _word(rng, w)},
        lambda v: v["w"].upper(),
        lambda v, t: f'The word "{v["w"]}" in uppercase is "{t}".',
        lambda v: v["w"],
        _score_uppercase),
}
FAMILIES = tuple(_F)

_SLOTS = {"a": r"-?\d+", "b": r"-?\d+", "n": r"\d+", "w": r"[a-z]+", "c": r"[a-z]",
          "nums": r"-?\d+(?:, -?\d+)+", "ask": r"larger|smaller"}


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    body = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_SLOTS[p]})"
                   for i, p in enumerate(parts))
    return re.compile(body)


_PARSERS = [(fam, t, _template_regex(t)) for fam, f in _F.items() for t in f.templates]


def _build(family: str, values: dict, template: str) -> Task:
    f = _F[family]
    target = f.target(values)
    shown = {k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in values.items()}
    return Task(family, template.format(**shown), f.answer(values, target),
                {**values, "target": target})


def split_of(family: str, values: dict) -> str:
    """"heldout" for a fixed HELDOUT_FRACTION of canonical problems (by hash), else "train"."""
    key = f"{family}:{_F[family].key(values)}".encode()
    u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    return "heldout" if u < HELDOUT_FRACTION else "train"


def _usable_words(words, level: Level) -> list[str]:
    lo, hi = level.word_len
    pool = FALLBACK_WORDS if words is None else words
    usable = sorted({w for w in pool if w.isascii() and w.isalpha() and w.islower()
                     and lo <= len(w) <= hi})
    if not usable:
        raise ValueError(f"no lowercase alphabetic words of length {lo}..{hi} among the "
                         f"{len(pool)} words given")
    return usable


def make_tasks(families: Sequence[str], n: int, seed: int, split: str = "train",
               difficulty: int = 1, words: Sequence[str] | None = None) -> list[Task]:
    """n tasks cycling through `families`, deterministic in (families, n, seed, split,
    difficulty, words); only problems of `split` ("train" | "heldout") are drawn."""
    unknown = [f for f in families if f not in _F]
    if unknown or not families:
        raise ValueError(f"unknown task families {unknown}; choose from {FAMILIES}")
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    if difficulty not in LEVELS:
        raise ValueError(f"difficulty must be one of {sorted(LEVELS)}, got {difficulty!r}")
    level = LEVELS[difficulty]
    needs_words = any(f in ("reverse", "count_letter", "uppercase") for f in families)
    vocab = _usable_words(words, level) if needs_words else []
    rng = random.Random(f"tasks:{seed}:{split}:{difficulty}")
    tasks = []
    for i in range(n):
        family = families[i % len(families)]
        for _ in range(_MAX_TRIES):
            values = _F[family].sample(rng, level, vocab)
            if split_of(family, values) == split:
                break
        else:
            raise ValueError(f"no {split} problem of {family!r} found in {_MAX_TRIES} draws at "
                             f"difficulty {difficulty}: too few distinct problems "
                             f"({len(vocab)} words)")
        tasks.append(_build(family, values, rng.choice(_F[family].templates)))
    return tasks


def gold_for_prompt(prompt_text: str) -> Task | None:
    """The Task a prompt states, parsed back with the families' templates (whitespace
    collapsed), or None when the text is not a task prompt."""
    text = " ".join(str(prompt_text).split())
    for family, template, regex in _PARSERS:
        m = regex.fullmatch(text)
        if m is None:
            continue
        values = {k: ([int(x) for x in v.split(", ")] if k == "nums"
                      else int(v) if k in ("a", "b", "n") else v)
                  for k, v in m.groupdict().items()}
        if family == "number_words" and values["n"] >= 1_000_000:
            return None  # beyond number_to_words
        return _build(family, values, template)
    return None


def task_messages(task: Task) -> list[dict]:
    """An SFT demonstration: the user prompt and the reference reply."""
    return [{"role": "user", "content": task.prompt},
            {"role": "assistant", "content": task.answer}]


def prompt_messages(task: Task) -> list[dict]:
    """The prompt alone, ready for chat.render_prompt."""
    return [{"role": "user", "content": task.prompt}]


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def _sentence_scores(task: Task, text: str) -> list[float]:
    return [_F[task.family].score(task.spec, s) for s in _sentences(text)[:MAX_SENTENCES]]


def correctness(task: Task, response: str) -> float:
    """The best sentence's correctness c alone: gold without its position, length and
    termination factors (what the reply says, not how it says it)."""
    return max(_sentence_scores(task, response.strip()), default=0.0)


def gold(task: Task, response: str, terminated: bool = True) -> float:
    """Gold score of a reply in [0, 1]; see the module docstring for the formula."""
    text = response.strip()
    if not text:
        return 0.0
    best = max(c * BURIED**i for i, c in enumerate(_sentence_scores(task, text)))
    concise = min(1.0, math.sqrt((1.5 * len(task.answer) + 10) / len(text)))
    return best * concise * (1.0 if terminated else UNTERMINATED)

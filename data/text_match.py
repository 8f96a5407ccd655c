"""Text matching used by the gold scorer of data/tasks.py: numbers and words pulled out of a
reply, and edit / subsequence distances between answers."""

import re
from collections.abc import Callable

_NUM = re.compile(r"-?\d+")
_QUOTED = re.compile(r"[\"“”]([^\"“”]+)[\"“”]")  # double quotes: apostrophes are not quotes
_WORD = re.compile(r"[A-Za-z]+")


def numbers(s: str) -> list[int]:
    return [int(x) for x in _NUM.findall(s)]


def levenshtein(x: str, y: str) -> int:
    prev = list(range(len(y) + 1))
    for i, cx in enumerate(x, 1):
        cur = [i]
        for j, cy in enumerate(y, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (cx != cy)))
        prev = cur
    return prev[-1]


def lcs(x: list, y: list) -> int:
    prev = [0] * (len(y) + 1)
    for cx in x:
        cur = [0]
        for j, cy in enumerate(y, 1):
            cur.append(prev[j - 1] + 1 if cx == cy else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def last_quoted_or(s: str, fallback: Callable[[str], str]) -> str:
    quoted = _QUOTED.findall(s)
    return quoted[-1].strip() if quoted else fallback(s)


def last_word(s: str) -> str:
    words = _WORD.findall(s)
    return words[-1] if words else ""


def after_is(s: str) -> str:
    tail = s.rsplit(" is ", 1)[-1]
    return tail.strip().rstrip(".!?").strip()


def norm_words(s: str) -> str:
    s = re.sub(r"[-,]", " ", s.lower())
    return " ".join(w for w in s.split() if w != "and")

"""Synthetic tasks: reference answers, partial credit, splits, determinism, prompt parsing."""

import pytest

from data import tasks
from data.tasks import gold

UNRELATED = "I like to walk in the park with my friends on sunny afternoons."
RAMBLE = " Anyway, that reminds me of a long story about my trip to the seaside last year."


def _near_miss(t):
    """A reply one small step from the reference, built from the problem values."""
    s = t.spec
    if t.family == "add":
        return f"The sum of {s['a']} and {s['b']} is {s['target'] + 1}."
    if t.family == "subtract":
        return f"{s['a']} minus {s['b']} is {s['target'] + 1}."
    if t.family == "count_letter":
        return f'The letter "{s["c"]}" appears {s["target"] + 1} times in "{s["w"]}".'
    if t.family == "compare":
        other = s["a"] + s["b"] - s["target"]
        wrong = s["target"] + 1 if s["target"] + 1 != other else s["target"] - 1
        return f"{wrong} is {s['ask']} than {other}."
    if t.family == "number_words":
        return f'The number {s["n"]} in words is "{tasks.number_to_words(s["n"] + 1)}".'
    if t.family == "sort":
        y = list(s["target"])
        y[0], y[1] = y[1], y[0]
        return "Sorted from smallest to largest: " + ", ".join(map(str, y)) + "."
    w = s["target"]  # reverse / uppercase: one letter changed
    swap = "Z" if t.family == "uppercase" else "z"
    return f'The word "{s["w"]}" is "{w[:-1] + (swap if w[-1] != swap else "q")}".'


@pytest.fixture(scope="module")
def sample():
    return [t for d in (1, 2, 3) for t in tasks.make_tasks(tasks.FAMILIES, 40, seed=d,
                                                            difficulty=d)]


def test_reference_scores_one_and_partial_credit_orders(sample):
    for t in sample:
        ref, near = gold(t, t.answer), gold(t, _near_miss(t))
        unrelated = gold(t, UNRELATED)
        assert ref == 1.0, t
        assert unrelated < 0.1 < near < 1.0, (t, near, unrelated)
        assert gold(t, t.answer, terminated=False) < ref
        assert gold(t, t.answer + RAMBLE) < ref
        buried = gold(t, "Let me think about that. " + t.answer)
        assert 0.5 < buried < ref
        assert gold(t, "") == 0.0


def test_numeric_credit_decays_with_distance():
    t = tasks.gold_for_prompt("What is 40 plus 60?")
    scores = [gold(t, f"The sum of 40 and 60 is {x}.") for x in (100, 101, 105, 130, 400)]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 5
    assert scores[-1] < 0.01


def test_compare_wrong_operand_is_zero_and_phrasings():
    t = tasks.gold_for_prompt("Which is larger, 27 or 13?")
    assert gold(t, "13 is larger than 27.") == 0.0
    assert gold(t, "27 is smaller than 13.") == 0.0
    assert gold(t, "The larger number is 27.") == 1.0
    assert gold(t, "13 is smaller than 27.") == 1.0  # a true statement that names 27


def test_number_to_words_known_values():
    known = {0: "zero", 13: "thirteen", 40: "forty", 57: "fifty-seven", 105: "one hundred five",
             2024: "two thousand twenty-four", 999_999: "nine hundred ninety-nine thousand "
             "nine hundred ninety-nine"}
    assert {n: tasks.number_to_words(n) for n in known} == known
    with pytest.raises(ValueError):
        tasks.number_to_words(-1)
    for n in [*range(0, 2000, 7), *range(2000, 1_000_000, 9973)]:
        assert tasks.words_to_number(tasks.number_to_words(n)) == n
    assert tasks.words_to_number("one hundred and five") == 105
    assert tasks.words_to_number("a hundred cats") is None


def test_train_and_heldout_never_share_a_prompt():
    for seed in (0, 1):
        train = tasks.make_tasks(tasks.FAMILIES, 800, seed=seed, split="train")
        held = tasks.make_tasks(tasks.FAMILIES, 800, seed=seed, split="heldout")
        assert not {t.prompt for t in train} & {t.prompt for t in held}
        assert all(tasks.split_of(t.family, t.spec) == "heldout" for t in held)
        # same problem in another phrasing or operand order lands in the same split
        for t in held[:40]:
            again = tasks.gold_for_prompt(t.prompt)
            assert tasks.split_of(again.family, again.spec) == "heldout"
    assert tasks.split_of("add", {"a": 3, "b": 9}) == tasks.split_of("add", {"a": 9, "b": 3})


def test_deterministic_by_seed_and_families_cycle():
    a = tasks.make_tasks(tasks.FAMILIES, 64, seed=5, difficulty=2)
    b = tasks.make_tasks(tasks.FAMILIES, 64, seed=5, difficulty=2)
    c = tasks.make_tasks(tasks.FAMILIES, 64, seed=6, difficulty=2)
    assert a == b and a != c
    assert [t.family for t in a[:8]] == list(tasks.FAMILIES)


def test_difficulty_sets_ranges():
    for d, level in tasks.LEVELS.items():
        for t in tasks.make_tasks(["add", "sort", "reverse"], 60, seed=0, difficulty=d):
            if t.family == "add":
                assert 0 <= t.spec["a"] <= level.max_number and 0 <= t.spec["b"] <= level.max_number
            elif t.family == "sort":
                assert len(t.spec["nums"]) == level.list_len
            else:
                lo, hi = level.word_len
                assert lo <= len(t.spec["w"]) <= hi
    with pytest.raises(ValueError, match="difficulty"):
        tasks.make_tasks(["add"], 1, seed=0, difficulty=9)


def test_words_come_from_the_given_vocabulary():
    vocab = ["zebra", "quilt", "Proper", "x1y", "ok", "jumps"]
    ts = tasks.make_tasks(["reverse", "uppercase", "count_letter"], 60, seed=0,
                          words=vocab)
    assert {t.spec["w"] for t in ts} <= {"zebra", "quilt", "jumps"}
    with pytest.raises(ValueError, match="no lowercase alphabetic words"):
        tasks.make_tasks(["reverse"], 1, seed=0, words=["ok", "Proper"])
    with pytest.raises(ValueError, match="no heldout problem"):
        tasks.make_tasks(["reverse"], 5, seed=0, split="heldout", words=["zebra"])
    with pytest.raises(ValueError, match="unknown task families"):
        tasks.make_tasks(["poetry"], 1, seed=0)


def test_gold_for_prompt_recovers_tasks(sample):
    for t in sample:
        assert tasks.gold_for_prompt(t.prompt) == t
        assert tasks.gold_for_prompt("  " + t.prompt.replace(" ", "  ") + "\n") == t
    assert tasks.gold_for_prompt("Tell me a story about a dragon.") is None
    assert tasks.gold_for_prompt("What is 3 plus?") is None


def test_task_messages_form():
    t = tasks.make_tasks(["add"], 1, seed=0)[0]
    assert tasks.task_messages(t) == [{"role": "user", "content": t.prompt},
                                      {"role": "assistant", "content": t.answer}]
    assert tasks.prompt_messages(t) == tasks.task_messages(t)[:1]

"""The two SFT demonstrators: same answers, the chatty one worth less under the gold scorer."""

import pytest

from data import demonstrators
from data import tasks as tasks_lib

TASKS = tasks_lib.make_tasks(tasks_lib.FAMILIES, 80, seed=3)


def _replies(convs):
    return [c[1]["content"] for c in convs]


def test_fraction_zero_is_the_reference_and_one_is_all_chatty():
    direct = _replies(demonstrators.demonstrations(TASKS, 0.0, seed=0))
    assert direct == [t.answer for t in TASKS]
    chatty = _replies(demonstrators.demonstrations(TASKS, 1.0, seed=0))
    for task, reply in zip(TASKS, chatty, strict=True):
        assert task.answer in reply and reply.startswith("Sure! ")
        assert any(reply.endswith(closer) for closer in demonstrators.CLOSERS)


def test_share_is_deterministic_in_the_seed_and_close_to_the_fraction():
    a = _replies(demonstrators.demonstrations(TASKS * 10, 0.6, seed=1))
    b = _replies(demonstrators.demonstrations(TASKS * 10, 0.6, seed=1))
    c = _replies(demonstrators.demonstrations(TASKS * 10, 0.6, seed=2))
    assert a == b and a != c
    share = sum(r.startswith("Sure!") for r in a) / len(a)
    assert 0.55 < share < 0.65


def test_chatty_reply_scores_below_the_same_direct_reply():
    chatty = _replies(demonstrators.demonstrations(TASKS, 1.0, seed=0))
    for task, reply in zip(TASKS, chatty, strict=True):
        direct_gold = tasks_lib.gold(task, task.answer)
        assert direct_gold == 1.0
        assert 0.3 < tasks_lib.gold(task, reply) < 0.7  # correct, but buried and long
        assert tasks_lib.correctness(task, reply) == 1.0  # what it says is right
        assert demonstrators.is_chatty(reply) and not demonstrators.is_chatty(task.answer)
    assert tasks_lib.correctness(TASKS[0], "  ") == 0.0


def test_bad_fraction_is_refused():
    with pytest.raises(ValueError, match="chatty_fraction"):
        demonstrators.demonstrations(TASKS, 1.5, seed=0)

"""The worlds seam (data/worlds.py), prompts files, ratings → pairs, and the errors bad user
files get (file:line, nothing written)."""

import io
import json
import random

import ml_collections
import numpy as np
import pytest

from data import dialogues, preferences, tasks, worlds
from data.preferences import Rating, pairs_from_ratings


def spec(source, **kw):
    base = dict(source=source, families="add,reverse", n_prompts=6, seed=3, difficulty=1)
    return ml_collections.ConfigDict({**base, **kw})


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_task_world_gives_the_prompts_and_gold_the_stages_had():
    world = worlds.make_world({"train": spec("tasks"), "heldout": spec("tasks", seed=9)})
    held = world.prompts("heldout")
    expected = tasks.make_tasks(("add", "reverse"), 6, seed=9, split="heldout")
    assert [p.messages for p in held] == [tasks.prompt_messages(t) for t in expected]
    assert [p.group for p in held] == [t.family for t in expected]
    replies = [t.answer for t in expected]
    gold = world.gold(held, replies, [True] * 6)
    assert gold.tolist() == [tasks.gold(t, t.answer) for t in expected]
    assert world.gold(held, replies, [False] * 6).tolist() == (gold * tasks.UNTERMINATED).tolist()
    assert world.has_gold and world.prompts("train") != held


def test_file_world_reads_both_row_forms_and_has_no_gold(tmp_path):
    path = write(tmp_path / "p.jsonl", [
        {"prompt": "Hello?"},
        "",
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                      {"role": "user", "content": "Name a fish."}], "group": "chat"}])
    world = worlds.make_world({"train": spec(f"local:{path}"), "heldout": spec("")})
    prompts = world.prompts("train")
    assert [p.text for p in prompts] == ["Hello?", "Name a fish."]
    assert [p.where for p in prompts] == [f"{path}:1", f"{path}:3"]
    assert prompts[1].group == "chat" and world.prompts("heldout") == []
    assert world.gold(prompts, ["a", "b"], [True, True]) is None and not world.has_gold


@pytest.mark.parametrize("row, message", [
    ({"prompt": ""}, "the prompt .last user turn. is empty"),
    ({"prompt": "   \n"}, "is empty"),
    ({"prompt": 3}, "'prompt' must be a string, got int"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     "user"),
    ({"text": "hi"}, "neither 'prompt' nor 'messages'"),
    ({"prompt": "ok", "group": 1}, "'group' must be a string"),
    ("not json", "not valid JSON"),
])
def test_a_bad_prompt_row_is_an_error_naming_file_and_line(tmp_path, row, message):
    path = write(tmp_path / "p.jsonl", [{"prompt": f"fine {i}"} for i in range(200)] + [row])
    with pytest.raises(dialogues.DataError, match=f"p.jsonl:201: .*{message}"):
        worlds.read_prompts(path)


def test_sources_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="heldout prompts local:nope.jsonl: no such"):
        worlds.make_world({"heldout": spec("local:nope.jsonl")})
    with pytest.raises(ValueError, match="source='prompts.jsonl': expected 'tasks', 'local:"):
        worlds.make_world({"train": spec("prompts.jsonl")})
    path = write(tmp_path / "p.jsonl", [{"prompt": "x"}])
    with pytest.raises(ValueError, match="mix the synthetic tasks and prompt files"):
        worlds.make_world({"train": spec(f"local:{path}"), "heldout": spec("tasks")})


def test_a_prompt_too_long_for_its_reply_names_its_line_and_length(tokenizer, tmp_path):
    path = write(tmp_path / "p.jsonl", [{"prompt": "short"}, {"prompt": "word " * 80}])
    prompts = worlds.read_prompts(path)
    ids = worlds.render_prompts(tokenizer, prompts[:1], 16, 64, "rollout")
    assert len(ids[0]) + 16 <= 64
    with pytest.raises(ValueError, match=r"p.jsonl:2: the prompt is \d+ tokens; with rollout "
                                         r"max_new_tokens=16 it needs \d+ > model.max_seq_len=64"):
        worlds.render_prompts(tokenizer, prompts, 16, 64, "rollout")


def rating(prompt, response, value, **meta):
    return Rating([{"role": "user", "content": prompt}], response, value, "p", meta)


def test_ratings_become_pairs_by_the_documented_rule():
    rows = [rating("q1", "good", 1.0), rating("q1", "half", 0.5), rating("q2", "x", 0.0),
            rating("q1", "also good", 1.0), rating("q2", "y", 0.75),
            rating("q3", "same", 0.2), rating("q3", "same", 0.9)]  # a conflict: no pair
    pairs = pairs_from_ratings(rows)
    got = [(p.prompt[0]["content"], p.chosen, p.rejected) for p in pairs]
    assert got == [("q1", "good", "half"), ("q1", "also good", "half"), ("q2", "y", "x")]
    assert pairs[0].meta["rating_chosen"] == 1.0 and pairs[0].meta["rating_rejected"] == 0.5
    # an unfinished reply is not the same reply as a finished one with the same text
    cut = [rating("q", "t", 1.0), rating("q", "t", 0.0, terminated=False)]
    assert [(p.meta["chosen_terminated"], p.meta["rejected_terminated"])
            for p in pairs_from_ratings(cut)] == [(True, False)]


def test_rating_files_read_as_pairs_and_bad_ratings_name_their_line(tmp_path):
    good = [{"prompt": "q", "response": "a", "rating": 1}, {"prompt": "q", "response": "b",
                                                            "rating": 0.25}]
    pairs = preferences.read_preferences(write(tmp_path / "r.jsonl", good))
    assert [(p.chosen, p.rejected, p.meta["format"]) for p in pairs] == [("a", "b", "ratings")]
    for bad in (1.5, -0.1, "1", True, None):
        path = write(tmp_path / "bad.jsonl", good + [{"prompt": "q", "response": "c",
                                                      "rating": bad}])
        with pytest.raises(dialogues.DataError, match=r"bad.jsonl:3: 'rating' must be a number "
                                                      r"in \[0, 1\]"):
            preferences.read_preferences(path)


def test_a_pair_whose_chosen_equals_rejected_is_a_bad_row(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"},
                                        {"prompt": "q", "chosen": "same", "rejected": "same"}])
    with pytest.raises(dialogues.DataError, match="p.jsonl:2: 'chosen' equals 'rejected'"):
        preferences.read_preferences(path)


def test_the_terminal_annotator_rates_on_the_seed_scale():
    out = io.StringIO()
    person = preferences.HumanAnnotator(io.StringIO("2\nhalf\n0.5\n1\ns\nq\n"), out,
                                        random.Random(0))
    assert person.rate("Q?", "A.") == 0.5
    assert "not a rating in [0, 1]: '2'" in out.getvalue() and "[reply] A." in out.getvalue()
    assert [person.rate("Q?", "B."), person.rate("Q?", "C."), person.rate("Q?", "D.")] == [
        1.0, "skip", "quit"]
    assert preferences.HumanAnnotator(io.StringIO(""), out, random.Random(0)).rate("Q", "A") \
        == "quit"


def test_rm_win_rate_counts_ties_half():
    from train.ppo_eval import rm_wins

    assert rm_wins([1.0, 0.0, 2.0], [0.5, 0.0, 3.0]).tolist() == [1.0, 0.5, 0.0]
    assert np.mean(rm_wins([0.1] * 4, [0.1] * 4)) == 0.5

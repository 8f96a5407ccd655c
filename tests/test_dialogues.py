"""Dialogue and preference readers (bad-row policy), the writer and both annotators."""

import io
import json
import math
import random

import numpy as np
import pytest

from data import dialogues, preferences
from data.dialogues import DataError
from data.preferences import HumanAnnotator, Preference, PreferenceWriter, synthetic_label

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
HH = "\n\nHuman: What is 2 plus 2?\n\nAssistant: It is 4.\n\nHuman: Thanks!\n\nAssistant: Sure."


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_dialogues_both_forms(tmp_path):
    p = _write(tmp_path / "d.jsonl", [json.dumps(GOOD), "", json.dumps({"chosen": HH})])
    got = dialogues.read_dialogues(p)
    assert got[0] == GOOD["messages"]
    assert got[1] == [{"role": "user", "content": "What is 2 plus 2?"},
                      {"role": "assistant", "content": "It is 4."},
                      {"role": "user", "content": "Thanks!"},
                      {"role": "assistant", "content": "Sure."}]


@pytest.mark.parametrize("row, fragment", [
    ("{not json", "not valid JSON"),
    (json.dumps([1, 2]), "must be a JSON object"),
    (json.dumps({"text": "x"}), "neither 'messages' nor 'chosen'"),
    (json.dumps({"messages": [{"role": "assistant", "content": "x"}]}), "role 'assistant'"),
    (json.dumps({"chosen": "\n\nAssistant: hi"}), "role 'assistant' where 'user'"),
    (json.dumps({"chosen": "Hello\n\nHuman: hi\n\nAssistant: yo"}), "must start with"),
    (json.dumps({"chosen": "no turns at all"}), "must start with"),
    (json.dumps({"chosen": "\n\nHuman: only a question"}), "must end with an 'assistant'"),
])
def test_malformed_row_reported_with_file_and_line(tmp_path, row, fragment):
    p = _write(tmp_path / "d.jsonl", [json.dumps(GOOD), json.dumps(GOOD), row])
    with pytest.raises(DataError) as err:
        dialogues.read_dialogues(p)
    assert f"{p}:3: " in str(err.value) and fragment in str(err.value)
    assert "1 of 3 rows" in str(err.value)


def test_few_bad_rows_warn_and_are_skipped(tmp_path):
    lines = [json.dumps(GOOD)] * 150
    lines[41] = "{broken"
    p = _write(tmp_path / "d.jsonl", lines)
    with pytest.warns(UserWarning, match=f"{p}:42: not valid JSON"):
        got = dialogues.read_dialogues(p)
    assert len(got) == 149
    lines[99] = json.dumps({"messages": []})  # 2 of 150 > 1%
    p = _write(tmp_path / "d.jsonl", lines)
    with pytest.raises(DataError, match=f"{p}:100: messages must be a non-empty list"):
        dialogues.read_dialogues(p)
    with pytest.warns(UserWarning, match="2 of 150"):
        assert len(dialogues.read_dialogues(p, max_bad_fraction=0.02)) == 148


def test_conversations_from_turns():
    assert dialogues.conversations_from_turns(["hi", "hello", "how are you?"]) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert len(dialogues.conversations_from_turns(["a", "b", "c", "d"])) == 4
    assert dialogues.conversations_from_turns(["alone"]) is None
    assert dialogues.conversations_from_turns([]) is None


PROMPT = [{"role": "user", "content": "What is 2 plus 2?"}]
NATIVE = {"prompt": PROMPT, "chosen": "It is 4.", "rejected": "It is 5.",
          "annotator": "synthetic", "meta": {"gold_chosen": 1.0}}
HH_PAIR = {"chosen": "\n\nHuman: What is 2 plus 2?\n\nAssistant: It is 4.",
           "rejected": "\n\nHuman: What is 2 plus 2?\n\nAssistant: It is 5."}
PLAIN = {"prompt": "What is 2 plus 2?", "chosen": "It is 4.", "rejected": "It is 5."}


def test_preference_readers_three_forms(tmp_path):
    p = _write(tmp_path / "p.jsonl", [json.dumps(r) for r in (NATIVE, HH_PAIR, PLAIN)])
    native, hh, plain = preferences.read_preferences(p)
    assert native == Preference(**NATIVE)
    for pref, form in ((hh, "hh"), (plain, "plain")):
        assert (pref.prompt, pref.chosen, pref.rejected) == (PROMPT, "It is 4.", "It is 5.")
        assert pref.annotator == "unknown" and pref.meta == {"format": form}


@pytest.mark.parametrize("row, fragment", [
    ({"prompt": "q", "chosen": "a"}, "missing ['rejected']"),
    ({**HH_PAIR, "rejected": "\n\nHuman: Other?\n\nAssistant: B"}, "do not share a prompt"),
    ({"chosen": "no assistant", "rejected": "x"}, "no '\\n\\nAssistant:' turn"),
    ({**PLAIN, "chosen": 4}, "'chosen' must be a string"),
    ({**NATIVE, "prompt": PROMPT + [{"role": "assistant", "content": "x"}]}, "end with an 'user'"),
])
def test_malformed_preferences(tmp_path, row, fragment):
    p = _write(tmp_path / "p.jsonl", [json.dumps(NATIVE), json.dumps(row)])
    with pytest.raises(DataError) as err:
        preferences.read_preferences(p)
    assert f"{p}:2: " in str(err.value) and fragment in str(err.value)


def test_writer_appends_and_survives_a_torn_line(tmp_path):
    p = tmp_path / "prefs.jsonl"
    with PreferenceWriter(p) as w:
        w.write(Preference(**NATIVE))
        assert len(preferences.read_preferences(p)) == 1  # visible before close
    with open(p, "a") as f:
        f.write('{"prompt": [{"ro')  # a crash mid-row
    with PreferenceWriter(p) as w:
        w.write(Preference(**{**NATIVE, "chosen": "Four."}))
    with pytest.warns(UserWarning, match=f"{p}:2: not valid JSON"):
        rows = preferences.read_preferences(p, max_bad_fraction=0.5)
    assert [r.chosen for r in rows] == ["It is 4.", "Four."]


def _p_label_a(ga, gb, tau, eps):
    p = 1 / (1 + math.exp(-(ga - gb) / tau))
    return (1 - eps) * p + eps * (1 - p)


@pytest.mark.parametrize("ga, gb, tau, eps", [
    (0.9, 0.4, 0.2, 0.0), (0.9, 0.4, 0.2, 0.1), (0.3, 0.5, 0.1, 0.25), (0.5, 0.5, 0.1, 0.05),
    (1.0, 0.0, 0.05, 0.2),
])
def test_synthetic_label_frequencies(ga, gb, tau, eps):
    rng, n = np.random.default_rng(0), 20_000
    labels = [synthetic_label(ga, gb, tau, eps, rng) for _ in range(n)]
    assert set(labels) <= {"a", "b"}
    p = _p_label_a(ga, gb, tau, eps)
    freq = labels.count("a") / n
    assert abs(freq - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (freq, p)


def test_synthetic_label_ties_and_arguments():
    rng = random.Random(0)
    assert synthetic_label(0.2, 0.9, 0.1, 0.3, rng, identical=True) == "tie"
    assert synthetic_label(1.0, 0.0, 1e-6, 0.0, rng) == "a"  # no overflow at tiny tau
    assert synthetic_label(0.0, 1.0, 1e-6, 0.0, rng) == "b"
    with pytest.raises(ValueError, match="tau"):
        synthetic_label(0.1, 0.2, 0.0, 0.1, rng)
    with pytest.raises(ValueError, match="eps"):
        synthetic_label(0.1, 0.2, 1.0, 1.5, rng)


def _shown_first(out_text):
    return [line[4:] for line in out_text.splitlines() if line.startswith("[A] ")]


def test_human_annotator_maps_back_to_original_order():
    inp = io.StringIO("a\n" * 40)
    out = io.StringIO()
    ann = HumanAnnotator(inp, out, random.Random(3))
    got = []
    for _ in range(40):
        got.append(ann.label(PROMPT, "answer one", "answer two"))
    shown = _shown_first(out.getvalue())
    # the person always picked the answer shown first: the label names that one
    assert got == ["a" if s == "answer one" else "b" for s in shown]
    assert {"a", "b"} <= set(got)  # both orders occurred
    assert "USER: What is 2 plus 2?" in out.getvalue()


def test_human_annotator_keys_skip_tie_quit_and_eof():
    inp = io.StringIO("x\nskip\nT\ns\nq\n")
    out = io.StringIO()
    ann = HumanAnnotator(inp, out, random.Random(0))
    assert ann.label("plain prompt", "A1", "B1") == "skip"  # after an unknown key
    assert "unknown key 'x'" in out.getvalue()
    assert ann.label(PROMPT, "A2", "B2") == "tie"
    assert ann.label(PROMPT, "A3", "B3") == "skip"
    assert ann.label(PROMPT, "A4", "B4") == "quit"
    assert ann.label(PROMPT, "A5", "B5") == "quit"  # end of input

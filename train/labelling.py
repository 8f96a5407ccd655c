"""Labelling of collected candidate pairs (train/collect.py samples them): the synthetic
Bradley-Terry rater, a person choosing between two replies, a person rating each reply 0 … 1.

Each labeller appends or writes `<split>.jsonl` preference rows (the reward model's input) and
returns {"ties", "skipped", "complete"}. A person's session resumes: rows already answered
(by meta["pair_id"], or the rating's id) and ties / skips in the side file are not asked again.
A candidate is anything with collect.Candidate's fields.
"""

import hashlib
import json
import os

import numpy as np

from data import dialogues
from data import preferences as prefs


def pair_id(split: str, prompt_index: int, samples, prompt, responses, terminated) -> str:
    """Content hash: stable across runs, different for any change of prompt or replies."""
    key = json.dumps(
        [split, prompt_index, list(samples), prompt, list(responses), list(terminated)],
        ensure_ascii=False,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def synthetic_name(tau: float, eps: float) -> str:
    return f"synthetic-bt(tau={tau:g},eps={eps:g})"


def label_synthetic(cands, path: str, tau: float, eps: float, seed: int) -> dict:
    """Labels every candidate with the noisy BT rater; writes all rows at once (atomically)."""
    rng, name = np.random.default_rng(seed), synthetic_name(tau, eps)
    ties = 0
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for c in cands:
            label = prefs.synthetic_label(
                c.gold[0], c.gold[1], tau, eps, rng, identical=c.identical
            )
            if label == "tie":
                ties += 1
                continue
            f.write(json.dumps(c.preference(label, name).to_json(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return {"ties": ties, "skipped": 0, "complete": True}


def read_ids(path: str, key) -> dict:
    """pair_id -> row for the parseable JSON rows of path (a torn last line is ignored)."""
    found = {}
    if not os.path.exists(path):
        return found
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
                found[key(row)] = row
            except (json.JSONDecodeError, TypeError, KeyError, AttributeError):
                continue
    return found


def label_human(cands, path: str, skipped_path: str, annotator) -> dict:
    """Asks the annotator about every candidate not yet labelled, tied or skipped; appends each
    answer at once. Identical replies are recorded as ties without asking."""
    done = set(read_ids(path, lambda r: r["meta"]["pair_id"]))
    done |= set(read_ids(skipped_path, lambda r: r["pair_id"]))
    todo = [c for c in cands if c.pair_id not in done]
    complete = True
    with prefs.PreferenceWriter(path) as writer, open(skipped_path, "a", encoding="utf-8") as side:
        for n, c in enumerate(todo):
            if c.identical:
                label = "tie"
            else:
                annotator.out.write(f"\npair {len(cands) - len(todo) + n + 1} of {len(cands)}")
                label = annotator.label(c.prompt, *c.responses)
            if label == "quit":
                complete = False
                break
            if label in ("a", "b"):
                writer.write(c.preference(label, "human"))
            else:
                side.write(json.dumps({"pair_id": c.pair_id, "label": label}) + "\n")
                side.flush()
                os.fsync(side.fileno())
    side_rows = read_ids(skipped_path, lambda r: r["pair_id"]).values()
    return {
        "ties": sum(r["label"] == "tie" for r in side_rows),
        "skipped": sum(r["label"] == "skip" for r in side_rows),
        "complete": complete,
    }


def label_ratings(cands, path: str, skipped_path: str, annotator) -> dict:
    """Asks the annotator to rate every distinct reply of the candidates (0 = off … 1 =
    perfect), appending each rating to <split>.ratings.jsonl at once (a later run asks only
    the rest); when all are rated, writes the pairs data.preferences.pairs_from_ratings makes
    of them to `path`."""
    ratings_path = path.replace(".jsonl", ".ratings.jsonl")
    todo, seen = [], set()
    for c in cands:
        for side in (0, 1):
            key = (c.prompt_index, c.responses[side], c.terminated[side])
            if key not in seen:
                seen.add(key)
                rid = pair_id(c.split, c.prompt_index, (c.samples[side],), c.prompt,
                              (c.responses[side],), (c.terminated[side],))
                meta = {"rating_id": rid, "split": c.split, "family": c.family,
                        "prompt_index": c.prompt_index, "sample": c.samples[side],
                        "terminated": c.terminated[side], "gold": c.gold[side]}
                todo.append((rid, c.prompt, c.responses[side], meta))
    done = set(read_ids(ratings_path, lambda r: r["meta"]["rating_id"]))
    done |= set(read_ids(skipped_path, lambda r: r["rating_id"]))
    complete, left = True, [t for t in todo if t[0] not in done]
    with prefs.PreferenceWriter(ratings_path) as writer, open(skipped_path, "a") as side:
        for n, (rid, prompt, response, meta) in enumerate(left):
            annotator.out.write(f"\nreply {len(todo) - len(left) + n + 1} of {len(todo)}")
            value = annotator.rate(prompt, response)
            if value == "quit":
                complete = False
                break
            if value == "skip":
                side.write(json.dumps({"rating_id": rid, "label": "skip"}) + "\n")
                side.flush()
                os.fsync(side.fileno())
            else:
                writer.write(prefs.Rating(prompt, response, value, "human", meta))
    skipped = len(read_ids(skipped_path, lambda r: r["rating_id"]))
    if complete:
        ratings = dialogues.read_jsonl(ratings_path, prefs.parse_rating, max_bad_fraction=0.0)
        pairs = prefs.pairs_from_ratings(ratings)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            for p in pairs:
                key = [p.prompt, p.chosen, p.rejected, p.meta["chosen_terminated"],
                       p.meta["rejected_terminated"]]
                p.meta["pair_id"] = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
                f.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
        os.replace(path + ".tmp", path)
    return {"ties": 0, "skipped": skipped, "complete": complete}


def gold_agreement(rows) -> tuple[float, int]:
    """Share of labelled pairs whose chosen reply has the higher gold, among pairs where gold
    differs (and how many those are)."""
    diffs = [r["meta"]["gold_chosen"] - r["meta"]["gold_rejected"] for r in rows
             if r["meta"].get("gold_chosen") is not None]
    diffs = [d for d in diffs if d != 0]
    return (float(np.mean([d > 0 for d in diffs])) if diffs else float("nan")), len(diffs)

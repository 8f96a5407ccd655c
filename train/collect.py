"""Stage 3a — preference collection: SFT samples, paired, labelled by an annotator.

    python -m scripts.collect_preferences --config configs/reward/tiny.py --workdir runs/prefs

1. Prompts, from the collection's world (data/worlds.py): `collect.source` for the TRAIN
   split and `collect.heldout_source` for the HELD-OUT one — the synthetic tasks
   (`n_prompts` / `heldout_prompts` of them; data/tasks.py never puts one problem in both) or
   the user's prompts files. Held-out pairs go to their own file and are used only to
   evaluate the reward model.
2. Samples: k replies per prompt from the SFT checkpoint (`init_from`), at `collect.temperature`
   (the rendered prompt repeated k times through train.generation.ChatGenerator); in the
   synthetic world each reply's gold score (data.tasks.gold, halved when it never ended its
   turn) is recorded.
3. Pairs: of the k(k−1)/2 index pairs of one prompt's samples, pairs whose two replies differ
   (in text or in whether they ended) come first, in a seeded random order, then identical
   ones; the first `pairs_per_prompt` are kept. An identical pair is kept only when too few
   distinct ones exist; every annotator calls it a tie and it is skipped (and counted).
4. Labels: `synthetic` — data.preferences.synthetic_label, the noisy Bradley-Terry rater over
   gold: P(A ≻ B) = σ((g_A − g_B)/τ), flipped with probability ε (Gao et al. 2022). These are
   synthetic preferences from a programmatic labeller, not human data. `human` — a person at
   the terminal (data.preferences.HumanAnnotator); each label is appended as it is given, and a
   later run skips every pair already in the output (by meta["pair_id"]) or recorded as tie /
   skip in the side file, so a session can stop (q) and resume. `rate` — the person rates each
   distinct reply on the seed article's scale (0 if the answer is off, 1 if perfect) into
   <split>.ratings.jsonl, resumable the same way; once all are rated the pairs are made by
   data.preferences.pairs_from_ratings (same prompt, different ratings: the higher chosen).
   `synthetic` needs the gold scorer, so prompt files take `human` or `rate`.

Files in the workdir: candidates_<split>.json (the pairs to label, written once sampling is
done, so resuming never re-samples), <split>.jsonl (the preference rows), <split>.skipped.jsonl
(ties and skips), summary.json — written last: its presence marks the collection complete, and
a complete collection is never redone.
"""

import dataclasses
import json
import os
import random
import sys
import time

import jax
import ml_collections
import numpy as np

from data import preferences as prefs
from data import worlds
from data.tokenizer import check_vocab, load_tokenizer
from train import checkpoint, distributed, generation
from train import setup as setup_lib
from train.checkpoint import abstract_like, load_params
from train.labelling import (
    gold_agreement,
    label_human,
    label_ratings,
    label_synthetic,
    pair_id,
    read_ids,
    synthetic_name,
)
from train.metrics import write_run_info

SPLITS = ("train", "heldout")
ANNOTATORS = ("synthetic", "human", "rate")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """Two sampled replies to one prompt, waiting for a label."""

    pair_id: str
    split: str
    family: str  # the task family, or the prompt file row's "group"
    prompt_index: int
    samples: tuple  # (i, j): sample indices of the two replies among the prompt's k
    prompt: list  # messages ending with the user turn
    responses: tuple  # (a, b) texts
    terminated: tuple  # (bool, bool): the reply ended its turn with <|end|>
    gold: tuple  # (float, float); (None, None) in a world without a gold scorer

    @property
    def identical(self) -> bool:
        return self.responses[0] == self.responses[1] and self.terminated[0] == self.terminated[1]

    def preference(self, label: str, annotator: str) -> prefs.Preference:
        """The preference row for label "a" or "b" (the winner becomes `chosen`)."""
        c, r = (0, 1) if label == "a" else (1, 0)
        meta = {
            "pair_id": self.pair_id,
            "split": self.split,
            "family": self.family,
            "prompt_index": self.prompt_index,
            "samples": [self.samples[c], self.samples[r]],
            "gold_chosen": self.gold[c],
            "gold_rejected": self.gold[r],
            "chosen_terminated": self.terminated[c],
            "rejected_terminated": self.terminated[r],
        }
        return prefs.Preference(self.prompt, self.responses[c], self.responses[r], annotator, meta)


def form_pairs(keys, n_pairs: int, rng) -> list[tuple[int, int]]:
    """Up to n_pairs index pairs (i < j) of the k samples whose identities are `keys`:
    pairs with keys[i] != keys[j] first (in random order), identical ones after."""
    k = len(keys)
    index = [(i, j) for i in range(k) for j in range(i + 1, k)]
    order = [index[o] for o in rng.permutation(len(index))]
    distinct = [(i, j) for i, j in order if keys[i] != keys[j]]
    same = [(i, j) for i, j in order if keys[i] == keys[j]]
    return (distinct + same)[:n_pairs]


# ---------------------------------------------------------------------- sampling


def collection_world(config, words=None):
    """The world the collection samples from (data/worlds.py): config.collect.source for the
    train split, heldout_source for the held-out one."""
    cfg = config.collect
    spec = lambda source, n: ml_collections.ConfigDict(dict(
        source=source, families=cfg.families, n_prompts=n, seed=cfg.seed,
        difficulty=cfg.difficulty))
    return worlds.make_world({"train": spec(cfg.source, cfg.n_prompts),
                              "heldout": spec(cfg.heldout_source, cfg.heldout_prompts)},
                             words, "config.collect")


def load_lm_params(run_dir: str, setup, what: str = "init_from"):
    """(LM params, extras) of the newest checkpoint in <run_dir>/ckpt, sharded for this setup."""
    ckpt_dir = os.path.join(run_dir, "ckpt")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(
            f"{what}={run_dir!r}: no checkpoint folder {ckpt_dir} "
            "(train the SFT stage first, or point the config at its run)"
        )
    shardings, abstract = setup.param_shardings("lm")
    return load_params(ckpt_dir, abstract_like(abstract, shardings))


def sample_candidates(gen, params, world, prompts, rendered, split: str, cfg, rng):
    """(candidate pairs, sampling statistics) for one split's prompts (and their ids)."""
    if not prompts:
        return [], {"prompts": 0, "samples": 0}
    k = cfg.k
    out = gen.generate_ids(params, [p for p in rendered for _ in range(k)], rng)
    golds = world.gold([p for p in prompts for _ in range(k)], out.texts, out.terminated)
    pair_rng = np.random.default_rng([cfg.seed, SPLITS.index(split)])
    cands = []
    for n, prompt in enumerate(prompts):
        sl = slice(n * k, (n + 1) * k)
        texts, terms = out.texts[sl], [bool(t) for t in out.terminated[sl]]
        gold = [None] * k if golds is None else [float(g) for g in golds[sl]]
        for i, j in form_pairs(list(zip(texts, terms)), cfg.pairs_per_prompt, pair_rng):
            responses, terminated = (texts[i], texts[j]), (terms[i], terms[j])
            cands.append(
                Candidate(
                    pair_id(split, n, (i, j), prompt.messages, responses, terminated),
                    split,
                    prompt.group,
                    n,
                    (i, j),
                    prompt.messages,
                    responses,
                    terminated,
                    (gold[i], gold[j]),
                )
            )
    stats = {
        "prompts": len(prompts),
        "samples": len(out.texts),
        **({} if golds is None else {"mean_gold": float(np.mean(golds))}),
        "terminated": float(np.mean(out.terminated)),
        "mean_length": float(np.mean(out.lengths)),
    }
    return cands, stats


def save_candidates(path: str, cands: list, stats: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(
            {"stats": stats, "pairs": [dataclasses.asdict(c) for c in cands]}, f, ensure_ascii=False
        )
    os.replace(tmp, path)  # a half-written file never looks complete


def load_candidates(path: str) -> tuple[list, dict]:
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    tuples = ("samples", "responses", "terminated", "gold")
    cands = [
        Candidate(**{k: (tuple(v) if k in tuples else v) for k, v in row.items()})
        for row in obj["pairs"]
    ]
    return cands, obj["stats"]


# ---------------------------------------------------------------------- the stage


def run(config, workdir: str | None = None, *, in_stream=None, out_stream=None) -> dict:
    """Collects (or finishes collecting) train and held-out pairs; returns the summary.
    Nothing is redone when <workdir>/summary.json exists."""
    cfg = config.collect
    workdir = workdir or cfg.out
    summary_path = os.path.join(workdir, "summary.json")
    if os.path.exists(summary_path):
        print(f"preferences already collected in {workdir} (summary.json exists)")
        with open(summary_path) as f:
            return json.load(f)
    check_annotator(config)
    t0 = time.time()
    cands, stats = sample_all(config, workdir)
    write_run_info(workdir, config)  # after sample_all accepted the folder's candidates
    if not distributed.is_primary():  # process 0 labels and writes; the others read its summary
        distributed.barrier("collected")
        with open(summary_path) as f:
            return json.load(f)
    summary = label_all(config, workdir, cands, stats, in_stream, out_stream, t0)
    distributed.barrier("collected")
    return summary


def label_all(config, workdir, cands, stats, in_stream, out_stream, t0) -> dict:
    """Labels both splits with the configured annotator; writes the rows and the summary."""
    cfg = config.collect
    if cfg.annotator == "synthetic":
        counts = {
            s: label_synthetic(
                cands[s],
                os.path.join(workdir, f"{s}.jsonl"),
                cfg.tau,
                cfg.eps,
                seed=cfg.seed * 2 + i,
            )
            for i, s in enumerate(SPLITS)
        }
        annotator_name = synthetic_name(cfg.tau, cfg.eps)
    else:
        annotator = prefs.HumanAnnotator(
            in_stream or sys.stdin, out_stream or sys.stdout, random.Random(cfg.seed)
        )
        label = label_human if cfg.annotator == "human" else label_ratings
        counts = {}
        for s in SPLITS:
            counts[s] = label(
                cands[s],
                os.path.join(workdir, f"{s}.jsonl"),
                os.path.join(workdir, f"{s}.skipped.jsonl"),
                annotator,
            )
            if not counts[s]["complete"]:
                print(f"stopped: labels so far are saved in {workdir}; run again to resume")
                return {"complete": False}
        annotator_name = "human" if cfg.annotator == "human" else "human ratings"
    summary = write_summary(workdir, annotator_name, cands, stats, counts, time.time() - t0)
    return summary


def check_annotator(config) -> None:
    """Refuses an annotator the collection's world cannot serve, before any sampling."""
    annotator = config.collect.annotator
    if annotator not in ANNOTATORS:
        raise ValueError(f"config.collect.annotator={annotator!r}: expected one of {ANNOTATORS}")
    if annotator != "synthetic" and distributed.process_count() > 1:
        raise ValueError(f"config.collect.annotator={annotator!r}: a person labels at one "
                         "terminal; run this collection as one process")
    if annotator == "synthetic" and not collection_world(config).has_gold:
        raise ValueError(
            "config.collect.annotator='synthetic' labels pairs from the gold scorer of the "
            "synthetic tasks; prompts from files have none: use 'human' or 'rate'")


def sampling_key(config) -> dict:
    """What the candidates depend on (not the annotator): a resumed collection must match."""
    labelling = ("annotator", "tau", "eps", "out")
    key = {k: v for k, v in config.collect.to_dict().items() if k not in labelling}
    # the SFT checkpoint's identity, not its path: a moved or copied folder still matches
    return {**key, "init_from": checkpoint.identity(os.path.join(config.init_from, "ckpt"))}


def sample_all(config, workdir: str):
    """Candidates and sampling statistics of both splits, sampled once and then reloaded."""
    paths = {s: os.path.join(workdir, f"candidates_{s}.json") for s in SPLITS}
    if not all(os.path.exists(p) for p in paths.values()):
        cfg = config.collect
        tok = load_tokenizer(config.data.tokenizer)
        check_vocab(tok, config.model.vocab_size)
        setup = setup_lib.make_setup(config)
        params, extras = load_lm_params(config.init_from, setup)
        words = extras.get("task_words") or None
        gen = generation.ChatGenerator(
            setup,
            tok,
            cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            batch_size=cfg.batch_size,
        )
        world = collection_world(config, words)
        limit = setup.model_cfg.max_seq_len
        prompts = {s: world.prompts(s) for s in SPLITS}  # all read and checked before the
        rendered = {s: worlds.render_prompts(tok, prompts[s], cfg.max_new_tokens, limit,
                                             "collect") for s in SPLITS}  # folder is made
        if distributed.is_primary():
            os.makedirs(workdir, exist_ok=True)
        for i, s in enumerate(SPLITS):
            t = time.time()
            cands, stats = sample_candidates(
                gen, params, world, prompts[s], rendered[s], s, cfg,
                jax.random.fold_in(jax.random.key(cfg.seed), i),
            )
            stats.update(sample_s=time.time() - t, sampling=sampling_key(config))
            if distributed.is_primary():  # every process sampled the same replies
                save_candidates(paths[s], cands, stats)
            gold = f", mean gold {stats['mean_gold']:.3f}" if "mean_gold" in stats else ""
            ended = f", ended {stats['terminated']:.0%}" if cands else ""
            print(f"{s}: {stats['samples']} samples of {stats['prompts']} prompts in "
                  f"{stats['sample_s']:.1f}s{gold}{ended}, {len(cands)} candidate pairs")
        distributed.barrier("candidates")
    loaded = {s: load_candidates(p) for s, p in paths.items()}
    for s, (_, stats) in loaded.items():
        if stats.get("sampling", sampling_key(config)) != sampling_key(config):
            raise ValueError(
                f"{paths[s]} was sampled with other settings ({stats['sampling']}) "
                f"than the config's; use another collect.out or delete {workdir}"
            )
    return {s: v[0] for s, v in loaded.items()}, {s: v[1] for s, v in loaded.items()}


def write_summary(workdir, annotator_name, cands, stats, counts, wall_s) -> dict:
    summary = {"annotator": annotator_name, "wall_s": wall_s}
    for s in SPLITS:
        rows = list(
            read_ids(os.path.join(workdir, f"{s}.jsonl"), lambda r: r["meta"]["pair_id"]).values()
        )
        agree, n_diff = gold_agreement(rows)
        summary[s] = {
            "pairs": len(rows),
            "candidates": len(cands[s]),
            "ties": counts[s]["ties"],
            "skipped": counts[s]["skipped"],
            "gold_agreement": agree,
            "gold_differs": n_diff,
            **stats[s],
        }
        print(
            f"{s}: {len(rows)} pairs labelled by {annotator_name} ({counts[s]['ties']} ties "
            f"skipped); chosen has the higher gold in {agree:.1%} of {n_diff} pairs where "
            "gold differs"
        )
    tmp = os.path.join(workdir, "summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, os.path.join(workdir, "summary.json"))
    return summary

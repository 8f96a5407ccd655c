"""The stage cache's parts without running a stage: which fingerprints a change moves (what
decides sharing), config paths relocated into the entries, the links in a pipeline folder."""

import os

import ml_collections
import pytest

from configs.pipeline import tiny
from scripts import pipeline
from train import stage_cache
from train.sweeps import trials


def fingerprints(tmp_path, **overrides):
    c = trials.apply(tiny.get_config(), {"workdir": str(tmp_path / "run"), **overrides}, "test")
    plan = pipeline.make_plan(c, pipeline.resolve(c), set(), set())
    return {name: rec["fingerprint"] for name, _, rec, _ in plan}


@pytest.mark.parametrize("key, value, moved", [
    ("ppo.kl.coef", 0.05, {"ppo", "evaluate", "report"}),
    ("stage_seeds.ppo", 3, {"ppo", "evaluate", "report"}),
    ("reward.optim.lr", 7.7e-4, {"reward", "ppo", "evaluate", "report"}),
    ("sft.optim.lr", 7.7e-4, {"sft", "collect", "reward", "ppo", "evaluate", "report"}),
    ("seed", 1, set(pipeline.STAGES) - {"tokenizer"}),
    ("pretrain.z_loss", 1e-4, set(pipeline.STAGES) - {"tokenizer"}),
    ("stage_cache", "/elsewhere", set()),  # where results go is not what they are
    ("cache_dir", "/elsewhere", set()),
])
def test_a_change_moves_the_fingerprints_of_its_stage_and_those_after(tmp_path, key, value,
                                                                      moved):
    base, changed = fingerprints(tmp_path), fingerprints(tmp_path, **{key: value})
    assert {s for s in base if base[s] != changed[s]} == moved


def test_a_switch_added_at_its_default_keeps_the_fingerprints_of_configs_without_it():
    """fingerprint.ADDED_DEFAULTS: results made before z_loss existed stay valid."""
    from train import fingerprint as fp

    old = {"model": {"d": 8}, "optim": {"lr": 1.0}}
    assert fp.canonical({**old, "z_loss": 0.0}, "/r") == fp.canonical(old, "/r")
    assert fp.canonical({**old, "z_loss": 1e-4}, "/r") != fp.canonical(old, "/r")


def test_relocate_rewrites_paths_into_the_entries_only():
    cfg = ml_collections.ConfigDict(dict(init_from="/p/pretrain", data=dict(
        tokenizer="/p/tokenizer/jaxchat.model", other="/p/pretrain_notes", n=3)))
    stage_cache.relocate({"sft": cfg}, {"/p/pretrain": "/c/pretrain-1",
                                        "/p/tokenizer": "/c/tokenizer-2"})
    assert cfg.init_from == "/c/pretrain-1"
    assert cfg.data.tokenizer == "/c/tokenizer-2/jaxchat.model"
    assert cfg.data.other == "/p/pretrain_notes" and cfg.data.n == 3  # a prefix, not a folder


def test_link_points_the_stage_at_its_entry_and_keeps_uncached_results(tmp_path):
    root, cache = tmp_path / "run", tmp_path / "cache"
    old = root / "sft"
    old.mkdir(parents=True)
    (old / "summary.json").write_text("{}")
    moved = []
    entry = stage_cache.entry_path(str(cache), "sft", "ab" * 32)
    stage_cache.link(str(old), entry, lambda: moved.append(os.rename(old, root / "kept")))
    assert moved and (root / "kept" / "summary.json").exists()
    assert os.path.islink(old) and not os.path.isabs(os.readlink(old))
    assert os.path.realpath(old) == os.path.realpath(entry)
    other = stage_cache.entry_path(str(cache), "sft", "cd" * 32)
    stage_cache.link(str(old), other, lambda: pytest.fail("a link is replaced, not moved"))
    assert os.path.realpath(old) == os.path.realpath(other) and os.path.isdir(entry)

"""Stage fingerprints: equal exactly when the computation is the same."""

import os

import pytest

from train import fingerprint as fp


def _config(root, data_file, lr=1e-3):
    return {"optim": {"lr": lr}, "workdir": root, "init_from": f"{root}/pretrain",
            "data": {"mixture": f"tasks=0.5,local:{data_file}=0.5", "cache_dir": "/somewhere",
                     "tokenizer": f"{root}/tokenizer/jaxchat.model"}}


def test_a_moved_pipeline_folder_keeps_its_fingerprints(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": []}\n')
    a = fp.make_record(_config(str(tmp_path / "a"), data), str(tmp_path / "a"), {"x": "1"})
    b = fp.make_record(_config(str(tmp_path / "b"), data), str(tmp_path / "b"), {"x": "1"})
    assert a["fingerprint"] == b["fingerprint"]
    assert a["config"]["init_from"] == "<pipeline>/pretrain"
    assert "workdir" not in a["config"] and "data.cache_dir" not in a["config"]


def test_config_files_and_upstream_each_change_the_fingerprint(tmp_path):
    root, data = str(tmp_path / "run"), tmp_path / "d.jsonl"
    data.write_text("one\n")
    base = fp.make_record(_config(root, data), root, {"pretrain": "p1"})
    lr = fp.make_record(_config(root, data, lr=3e-4), root, {"pretrain": "p1"})
    up = fp.make_record(_config(root, data), root, {"pretrain": "p2"})
    data.write_text("two\n")
    edited = fp.make_record(_config(root, data), root, {"pretrain": "p1"})
    prints = {r["fingerprint"] for r in (base, lr, up, edited)}
    assert len(prints) == 4
    assert fp.why_changed(base, lr) == "optim.lr 0.001 → 0.0003"
    assert fp.why_changed(base, up) == "pretrain changed"
    assert fp.why_changed(base, edited) == f"file {data} changed"
    assert "no fingerprint" in fp.why_changed(None, base)


def test_a_missing_local_file_names_its_key(tmp_path):
    root = str(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"config sft\.data\.mixture: the local file "
                                                r".*nope\.jsonl does not exist"):
        fp.make_record(_config(root, tmp_path / "nope.jsonl"), root, {}, "sft.")


def test_only_user_files_outside_the_folder_are_inputs(tmp_path):
    root = tmp_path / "run"
    (root / "tokenizer").mkdir(parents=True)
    (root / "tokenizer" / "jaxchat.model").write_text("m")
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("{}\n")
    cfg = {"data": {"preferences": str(prefs), "tokenizer": f"{root}/tokenizer/jaxchat.model",
                    "note": "/", "name": "tiny"}}
    assert fp.input_files(cfg, str(root)) == {os.path.abspath(prefs): "data.preferences"}

"""Every config file builds, is locked, and its model builds abstract parameters."""

import glob
import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import common
from model.config import ModelConfig
from model.transformer import Transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(
    os.path.relpath(p, ROOT)[:-3].replace(os.sep, ".")
    for p in glob.glob(os.path.join(ROOT, "configs", "*", "*.py"))
    if not p.endswith("__init__.py")
)


@pytest.fixture(scope="module")
def imported_dir(tmp_path_factory):
    """A folder shaped like scripts.import_hf's output (only its config.json is read)."""
    folder = tmp_path_factory.mktemp("imported")
    config = {"model": common.model_config("test", qkv_bias=True).to_dict(),
              "data": {"tokenizer": str(folder / "hf")}, "hf": {"architecture": "Qwen2ForCausalLM"}}
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _stage_configs(module_name, imported_dir):
    module = importlib.import_module(module_name)
    # configs/*/hf.py take the imported folder (model, tokenizer) as their argument
    cfg = module.get_config(imported_dir) if module_name.endswith(".hf") else module.get_config()
    if "model" in cfg:
        return [cfg]
    return [v for v in cfg.values() if hasattr(v, "keys") and "model" in v]  # pipelines


def _abstract_param_count(cfg: ModelConfig, head="lm") -> int:
    ones = jnp.ones((1, 4), jnp.int32)
    shapes = jax.eval_shape(lambda r: Transformer(cfg, head).init(r, ones, ones, ones),
                            jax.random.key(0))
    return sum(x.size for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("module_name", FILES)
def test_config_file_builds_abstract_params(module_name, imported_dir):
    stages = _stage_configs(module_name, imported_dir)
    assert stages, f"{module_name} has no stage config with a model"
    for cfg in stages:
        assert cfg.is_locked
        with pytest.raises(AttributeError):
            cfg.optim.no_such_key = 1  # locked: a typo is an error
        model_cfg = ModelConfig.from_config(cfg.model)
        assert _abstract_param_count(model_cfg) == model_cfg.param_count()


def test_hf_configs_build_the_imported_model_or_say_how_to_import(imported_dir, tmp_path):
    from configs.ppo import hf

    cfg = hf.get_config(imported_dir)
    assert cfg.model.qkv_bias and cfg.data.tokenizer.endswith("hf")
    with pytest.raises(FileNotFoundError, match="import a model first .*--workdir "):
        hf.get_config(str(tmp_path / "nothing"))


@pytest.mark.parametrize("size", sorted(common.MODEL_SIZES))
def test_named_model_sizes_build_abstract_params(size):
    model_cfg = ModelConfig.from_config(common.model_config(size))
    assert _abstract_param_count(model_cfg) == model_cfg.param_count()
    assert _abstract_param_count(model_cfg, "scalar") == model_cfg.param_count("scalar")


def test_cli_rejects_a_misspelt_override(tmp_path):
    cmd = [sys.executable, "-m", "scripts.train", "--config", "configs/pretrain/tiny.py",
           "--config.optim.lrr=1e-3", f"--workdir={tmp_path}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "lrr" in out.stderr
    assert not os.listdir(tmp_path)  # failed before anything was written

"""The stages by name: a literal dict, no registry machinery."""

import importlib


def run_stage(config, workdir: str):
    names = ("pretrain", "sft", "reward", "ppo")
    if config.stage not in names:
        raise ValueError(f"config.stage={config.stage!r}: expected one of {names}")
    return importlib.import_module(f"train.{config.stage}").run(config, workdir)

"""Train one stage from a config file.

    python -m scripts.train --config configs/pretrain/tiny.py --workdir runs/pretrain_tiny
    python -m scripts.train --config configs/sft/tiny.py --config.optim.lr=1e-4 --workdir runs/x

The config's `stage` picks the stage module (train/<stage>.py); every stage has run(config,
workdir). Overrides are checked against the locked config: a misspelt key is an error.
"""

import sys

from absl import flags
from ml_collections import config_flags

from train import cli, stages

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run folder (checkpoints, metrics, samples)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    with cli.folder_lock(_WORKDIR.value, "training run"):
        result = stages.run_stage(_CONFIG.value, _WORKDIR.value)
    if getattr(result, "interrupted", False):
        sys.exit(cli.EXIT_INTERRUPTED)  # a checkpoint was saved: the same command resumes


if __name__ == "__main__":
    cli.run(main)

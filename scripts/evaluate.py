"""Evaluate base, SFT and PPO of a pipeline folder on the same held-out task prompts.

    python -m scripts.evaluate --pipeline runs/pipeline_tiny
"""

import os

from absl import flags

from train import cli, evaluate

_PIPELINE = flags.DEFINE_string("pipeline", None, "pipeline folder (has pipeline_config.json)")
flags.mark_flag_as_required("pipeline")


def main(argv):
    del argv
    with cli.folder_lock(os.path.join(_PIPELINE.value, "evaluate"), "evaluation"):
        evaluate.run(_PIPELINE.value)


if __name__ == "__main__":
    cli.run(main)

"""Evaluate base, SFT and PPO of a pipeline folder on the same held-out task prompts.

    python -m scripts.evaluate --pipeline runs/pipeline_tiny
"""

from absl import app, flags

from train import evaluate

_PIPELINE = flags.DEFINE_string("pipeline", None, "pipeline folder (has pipeline_config.json)")
flags.mark_flag_as_required("pipeline")


def main(argv):
    del argv
    evaluate.run(_PIPELINE.value)


if __name__ == "__main__":
    app.run(main)

"""Rebuild report.md and its plots from a pipeline folder's run folders.

    python -m scripts.report --pipeline runs/pipeline_tiny
"""

from absl import flags

from train import cli, report

_PIPELINE = flags.DEFINE_string("pipeline", None, "pipeline folder")
flags.mark_flag_as_required("pipeline")


def main(argv):
    del argv
    report.build(_PIPELINE.value)
    print(f"wrote {_PIPELINE.value}/report.md")


if __name__ == "__main__":
    cli.run(main)

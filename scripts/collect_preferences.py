"""Collect preference pairs for the reward model: SFT samples, paired, labelled.

    python -m scripts.collect_preferences --config configs/reward/tiny.py --workdir runs/prefs
    python -m scripts.collect_preferences --config configs/reward/tiny.py \\
        --config.collect.annotator=human          # label at the terminal; q quits, rerun resumes
    python -m scripts.collect_preferences --config configs/reward/tiny.py \
        --config.collect.source=local:prompts.jsonl --config.collect.heldout_source= \
        --config.collect.annotator=rate           # rate each reply 0 (off) … 1 (perfect)

The default annotator gives synthetic preferences from a programmatic labeller (a noisy
Bradley-Terry rater over the tasks' gold scorer), not human data. Writes <workdir>/train.jsonl,
heldout.jsonl and, last, summary.json; a folder with summary.json is complete and left alone.
The reward stage reads config.collect.out unless data.preferences / data.heldout name files.
"""

import sys

from absl import flags
from ml_collections import config_flags

from train import cli, collect

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "reward experiment file", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder (default: config.collect.out)")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    config = _CONFIG.value
    workdir = _WORKDIR.value or config.collect.out
    if workdir != config.collect.out:
        print(
            f"note: writing to {workdir}; train the reward model with "
            f"--config.collect.out={workdir} (or --config.data.preferences=...)"
        )
    with cli.folder_lock(workdir, "preference collection"):
        summary = collect.run(config, workdir)
    if not summary.get("complete", True):
        sys.exit(cli.EXIT_INTERRUPTED)  # a labelling session stopped early: not complete yet


if __name__ == "__main__":
    cli.run(main)

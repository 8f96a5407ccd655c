"""One trial of a sweep file that defines run_trial(config, workdir) -> metrics dict.

    python -m train.sweeps.custom SWEEP_FILE[:arg] TRIAL_FOLDER

Reads TRIAL_FOLDER/config.json, runs the file's run_trial in TRIAL_FOLDER/run and writes the
metrics it returns to TRIAL_FOLDER/run/summary.json (what the sweep's results read).
"""

import json
import os
import sys

import ml_collections

from train import cli
from train.metrics import write_json
from train.sweeps import trials


def main(argv):
    if len(argv) != 3:
        raise ValueError("usage: python -m train.sweeps.custom SWEEP_FILE[:arg] TRIAL_FOLDER")
    module, _ = trials.load_module(argv[1])
    with open(os.path.join(argv[2], "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.lock()
    run = os.path.join(argv[2], "run")
    os.makedirs(run, exist_ok=True)
    metrics = module.run_trial(config, run)
    if not isinstance(metrics, dict):
        raise TypeError(f"{argv[1]}: run_trial returned a {type(metrics).__name__}, not a dict")
    write_json(os.path.join(run, "summary.json"), metrics)


if __name__ == "__main__":
    cli.run_argparse(lambda argv: main([sys.argv[0], *argv]))

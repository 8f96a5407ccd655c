"""A resolved config saved as JSON (what the pipeline hands each stage), locked again.

    python -m scripts.train --config configs/resolved.py:runs/x/sft/stage_config.json --workdir ...
"""

import json

import ml_collections


def get_config(path: str):
    with open(path) as f:
        cfg = ml_collections.ConfigDict(json.load(f))
    cfg.lock()
    return cfg

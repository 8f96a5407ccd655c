"""A sweep file → its trials: each one the base config with one override dict applied, a
readable name and a hash of what it computes.

    trials = expand("configs/sweeps/ppo_kl.py")          # or "file.py:arg"
    trials[0].name  → "kl.coef=0.02-seed=0-3f9a1c"

The file defines `get_config(arg=None)` (the base config: a pipeline config or one stage's)
and `get_sweep(arg=None)` (override dicts, configs/sweep.py). Optional: `run_trial(config,
workdir) -> dict` to run something other than the pipeline or the stage (its metrics);
`METRICS = {"dotted.metric": "max" | "min"}` for the results' table, best trials and plots;
`SEED_KEY` (default "seed") for the seed means; `analyse(workdir, rows) -> str`, markdown
added to results.md (configs/sweeps/overoptimisation.py draws its figure there).

Names are `key=value` descriptors (each key shortened to the shortest suffix that tells the
swept keys apart) and 6 hex digits of the resolved config's hash (location keys left out, so a
moved sweep keeps its names). The hash is what identifies a trial; the descriptors are for
people.
"""

import dataclasses
import difflib
import hashlib
import importlib.util
import json
import os
import re

import ml_collections

from train import fingerprint as fp


@dataclasses.dataclass(frozen=True)
class Trial:
    index: int
    name: str
    overrides: dict
    config: ml_collections.ConfigDict
    digest: str


@dataclasses.dataclass(frozen=True)
class Sweep:
    spec: str  # "file.py[:arg]", as given
    module: object
    kind: str  # "pipeline" | "stage" | "custom"
    trials: list
    metrics: dict  # {metric: "max" | "min"}, possibly empty
    seed_key: str = "seed"


def load_module(spec: str):
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config {path}: no such sweep file")
    module_spec = importlib.util.spec_from_file_location(f"_sweep_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    for fn in ("get_config", "get_sweep"):
        if not callable(getattr(module, fn, None)):
            raise ValueError(f"{path}: a sweep file defines {fn}(arg=None); this one has none")
    return module, arg or None


def kind_of(module, config) -> str:
    if callable(getattr(module, "run_trial", None)):
        return "custom"
    if all(k in config for k in ("pretrain", "sft", "reward", "ppo")):
        return "pipeline"
    if "stage" in config:
        return "stage"
    raise ValueError("the sweep's base config is neither a pipeline config (pretrain, sft, "
                     "reward, ppo sections) nor a stage config (a `stage` key), and the file "
                     "defines no run_trial(config, workdir)")


def apply(base: ml_collections.ConfigDict, overrides: dict, where: str):
    """A copy of `base` with the dotted-key overrides set (types checked by ml_collections)."""
    config = ml_collections.ConfigDict(base.to_dict())
    flat = fp.flatten(config.to_dict())
    for key, value in overrides.items():
        if key not in flat:
            close = difflib.get_close_matches(key, list(flat), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise KeyError(f"{where}: the config has no key {key}{hint}")
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        try:
            node[last] = value
        except TypeError as e:
            raise TypeError(f"{where}: {key}={value!r}: {e}") from None
    config.lock()
    return config


def digest_of(config) -> str:
    flat = {k: v for k, v in fp.flatten(config.to_dict()).items()
            if k.split(".")[-1] not in fp.LOCATION_KEYS and not fp.is_added_default(k, v)}
    text = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def short_keys(keys) -> dict:
    """{dotted key: the shortest suffix of it no other key ends with}."""
    keys, out = sorted(set(keys)), {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(k != key and (k == suffix or k.endswith("." + suffix)) for k in keys):
                break
        out[key] = suffix
    return out


def _value_text(value) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+\-_]", "_", text)[:24]


def trial_name(overrides: dict, short: dict, digest: str) -> str:
    parts = [f"{short[k]}={_value_text(v)}" for k, v in overrides.items()]
    return "-".join([*parts, digest])


def expand(spec: str) -> Sweep:
    """The sweep file's trials, checked: at least one, every key in the config, unique names."""
    module, arg = load_module(spec)
    base = module.get_config(arg)
    trials_overrides = list(module.get_sweep(arg))
    path = spec.partition(":")[0]
    if not trials_overrides:
        raise ValueError(f"{path}: get_sweep() returned no trials")
    short = short_keys(k for t in trials_overrides for k in t)
    trials, seen = [], {}
    for i, overrides in enumerate(trials_overrides):
        if not isinstance(overrides, dict):
            raise TypeError(f"{path}: trial {i} is a {type(overrides).__name__}, not a dict of "
                            "overrides")
        where = f"{path}: trial {i} ({', '.join(f'{k}={v!r}' for k, v in overrides.items())})"
        config = apply(base, overrides, where)
        digest = digest_of(config)
        name = trial_name(overrides, short, digest)
        if name in seen:
            raise ValueError(f"{path}: trials {seen[name]} and {i} are the same trial {name} "
                             "(the same resolved config): drop one")
        seen[name] = i
        trials.append(Trial(i, name, dict(overrides), config, digest))
    metrics = dict(getattr(module, "METRICS", {}) or {})
    bad = {m: d for m, d in metrics.items() if d not in ("max", "min")}
    if bad:
        raise ValueError(f"{path}: METRICS values are 'max' or 'min', got {bad}")
    return Sweep(spec, module, kind_of(module, base), trials, metrics,
                 getattr(module, "SEED_KEY", "seed"))

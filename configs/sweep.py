"""Sweeps written next to the config they vary: a config file may define `get_sweep(arg)`
returning its trials as override dicts, built with the combinators below.

    from configs import sweep

    def get_sweep(arg=None):
        return sweep.product(
            sweep.axis("ppo.kl.coef", [0.02, 0.05, 0.1]),
            sweep.zip(sweep.axis("ppo.optim.lr", [1e-5, 3e-5]),
                      sweep.axis("ppo.ppo.epochs", [4, 2])),
            sweep.seeds(3),
        )

A sweep is a list of {dotted config key: value} dicts, one per trial (lm-human-preferences'
combos, big_vision's hyper.product): `axis` is one key's values, `product` every combination,
`zip` values side by side, `chain` one list after another, `fixed` the same values for every
trial, `seeds(n)` the seed axis. `python -m scripts.sweep --config F --dry_run` prints the table.
"""

import builtins
import itertools


def axis(key: str, values) -> list[dict]:
    """One trial per value of `key`."""
    values = list(values)
    if not values:
        raise ValueError(f"sweep.axis({key!r}): no values")
    return [{key: v} for v in values]


def fixed(overrides: dict | None = None, **kwargs) -> list[dict]:
    """One trial with these overrides (to combine with others: the same values everywhere)."""
    return [{**(overrides or {}), **kwargs}]


def seeds(n: int, key: str = "seed", start: int = 0) -> list[dict]:
    """n trials with seeds start .. start+n-1 (the results give seed means with intervals)."""
    return axis(key, range(start, start + n))


def _merge(parts: tuple[dict, ...]) -> dict:
    out = {}
    for part in parts:
        for key, value in part.items():
            if key in out and out[key] != value:
                raise ValueError(f"sweep: {key} is swept twice ({out[key]!r} and {value!r})")
            out[key] = value
    return out


def product(*sweeps: list[dict]) -> list[dict]:
    """Every combination of the sweeps' trials (the first sweep varies slowest)."""
    return [_merge(parts) for parts in itertools.product(*sweeps)]


def zip(*sweeps: list[dict]) -> list[dict]:  # noqa: A001 - reads as the sweep it builds
    """The i-th trial of each sweep together; the sweeps must have the same length."""
    lengths = sorted({len(s) for s in sweeps})
    if len(lengths) > 1:
        raise ValueError(f"sweep.zip: the sweeps have different lengths {lengths}")
    return [_merge(parts) for parts in builtins.zip(*sweeps)]


def chain(*sweeps: list[dict]) -> list[dict]:
    """The trials of each sweep, one sweep after the other."""
    return [dict(t) for s in sweeps for t in s]


"""Stage 3b — reward model: Bradley-Terry on preference pairs, SFT trunk + scalar head.

    python -m scripts.train --config configs/reward/tiny.py --workdir runs/reward_tiny

Model: Transformer(head="scalar"). The trunk is copied from the SFT checkpoint (`init_from`),
the LM head dropped, and the `score` head initialised fresh and small — kernel N(0, 1/(d+1)),
bias 0, as OpenAI's lm-human-preferences did. The reward r(x, y) is the score at the LAST
response token: the <|end|> that closes the reply, or, for a reply that never ended, its last
token (compute_last_index finds it from the segment ids under left or right padding).

Loss (Bradley & Terry 1952; Ziegler et al. 2019; Ouyang et al. 2022 eq. 1), per pair

    ℓ = −log σ(r_c − r_r − m)        (m = config.margin, 0 by default)

summed over pairs with weight = number of pairs (train/step.py divides). Chosen and rejected
rows go through ONE forward pass: concatenated on the batch axis, split after (Tunix's DPO
trainer does the same), so both see the same parameters and the step compiles one model call.

Evaluation on the held-out pairs (prompts of the held-out task split): accuracy against the
labels, and against the gold ordering on pairs whose gold scores differ.

Normalisation (ppo.md item 6, Ziegler et al. 2019): after training, gain g and bias b with

    g = σ* / std(r),   b = μ* − g · mean(r)      (μ* = 0, σ* = 1 by default)

over the SFT policy's samples (the distinct replies of the collected training pairs), stored
in the checkpoint's extras {"reward_gain", "reward_bias"}. load_reward_model / make_reward_fn
apply it, so PPO and scripts/score.py always see g·r + b and the KL coefficient keeps its meaning.
"""

import json
import math
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data import pipeline
from data import preferences as prefs
from data.tokenizer import check_vocab, load_tokenizer
from model import sharding
from train import setup as setup_lib
from train.checkpoint import abstract_like, load_params
from train.collect import load_lm_params
from train.loop import Hooks, fit
from train.metrics import write_json
from train.reward_data import (
    KEYS,
    PairIterator,
    Scorer,
    encode_pairs,
    render_side,
    score_sequences,
)
from train.step import make_train_step

# ---------------------------------------------------------------------- reading the reward


class Normaliser(NamedTuple):
    """score = gain · raw + bias (fitted after training; see the module docstring)."""

    gain: float = 1.0
    bias: float = 0.0

    def __call__(self, raw):
        return self.gain * raw + self.bias


def fit_normalisation(raw, target_mean: float = 0.0, target_std: float = 1.0) -> Normaliser:
    """Gain and bias that give `raw` mean target_mean and (population) std target_std."""
    raw = np.asarray(raw, np.float64)
    if raw.size < 2 or not np.all(np.isfinite(raw)):
        raise ValueError(f"reward normalisation needs >= 2 finite scores, got {raw.size}")
    std = float(raw.std())
    gain = target_std / std if std > 1e-12 else 1.0  # constant rewards: shift only
    return Normaliser(gain, target_mean - gain * float(raw.mean()))


# ---------------------------------------------------------------------- the loss


def bradley_terry(r_chosen_B, r_rejected_B, weight_B, margin: float = 0.0):
    """(loss_sum, sums): Σ_b w_b · −log σ(r_c − r_r − margin), plus accuracy (a tie counts ½),
    the reward margin r_c − r_r and the mean reward, all as weighted sums; weight = Σ w."""
    d_B = r_chosen_B - r_rejected_B
    w_B = weight_B.astype(jnp.float32)
    real = w_B > 0  # padding pairs may hold anything (even NaN): never let it into a sum
    nll_B = jnp.where(real, -jax.nn.log_sigmoid(d_B - margin), 0.0)
    acc_B = jnp.where(d_B > 0, 1.0, jnp.where(d_B == 0, 0.5, 0.0))
    wsum = lambda x: jnp.sum(jnp.where(real, w_B * x, 0.0))
    loss = wsum(nll_B)
    return loss, {
        "loss": loss,
        "accuracy": wsum(acc_B),
        "margin": wsum(d_B),
        "reward": wsum(0.5 * (r_chosen_B + r_rejected_B)),
        "weight": jnp.sum(w_B),
    }


def make_reward_loss(model, margin: float = 0.0):
    """loss_fn over batches {chosen_*, rejected_*} of KEYS ([B, L] each); one forward pass."""

    def loss_fn(params, batch, rng):
        del rng  # no dropout
        both = {k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]]) for k in KEYS}
        r_chosen_B, r_rejected_B = jnp.split(score_sequences(model, params, both), 2)
        weight_B = jnp.any(batch["chosen_segment_ids"] != 0, axis=1)  # all-padding pair: 0
        return bradley_terry(r_chosen_B, r_rejected_B, weight_B, margin)

    return loss_fn


# ---------------------------------------------------------------------- evaluation


CLEAR_GOLD = 0.2  # |gold difference| from which a pair counts as clearly ordered


def pair_metrics(r_chosen, r_rejected, gold_chosen, gold_rejected, margin=0.0) -> dict:
    """Held-out metrics from raw rewards: loss, accuracy vs labels, accuracy vs gold ordering
    on pairs whose gold differs (accuracy_gold) and differs by >= CLEAR_GOLD
    (accuracy_gold_clear), a reward tie counting ½; mean margin."""
    d = np.asarray(r_chosen) - np.asarray(r_rejected)
    hit = lambda x: np.where(x > 0, 1.0, np.where(x == 0, 0.5, 0.0))
    g = np.asarray(gold_chosen, np.float64) - np.asarray(gold_rejected, np.float64)
    has_gold, g = np.isfinite(g) & (g != 0), np.nan_to_num(g)
    clear = np.abs(g) >= CLEAR_GOLD
    out = {
        "loss": float(np.mean(np.logaddexp(0.0, -(d - margin)))),
        "accuracy": float(np.mean(hit(d))),
        "margin": float(np.mean(d)),
        "pairs": float(len(d)),
        "gold_pairs": float(has_gold.sum()),
    }
    for name, m in (("accuracy_gold", has_gold), ("accuracy_gold_clear", clear)):
        out[name] = float(np.mean(hit(d[m] * np.sign(g[m])))) if m.any() else math.nan
    out["clear_pairs"] = float(clear.sum())
    return out


def _gold(pairs, side):
    return [float(p.meta.get(f"gold_{side}", math.nan)) for p in pairs]


def label_gold_agreement(pairs) -> float:
    """Share of pairs whose label agrees with gold, among pairs whose gold differs."""
    g = np.array(_gold(pairs, "chosen")) - np.array(_gold(pairs, "rejected"))
    g = g[np.isfinite(g) & (g != 0)]
    return float(np.mean(g > 0)) if g.size else math.nan


def make_pair_eval(scorer, tok, pairs, margin: float):
    chosen, rejected = render_side(tok, pairs, "chosen")[0], render_side(tok, pairs, "rejected")[0]
    gold_c, gold_r = _gold(pairs, "chosen"), _gold(pairs, "rejected")

    def eval_fn(params):
        return pair_metrics(
            scorer(params, chosen), scorer(params, rejected), gold_c, gold_r, margin
        )

    return eval_fn


def normalisation_sample(tok, pairs, max_samples: int, seed: int) -> list[list[int]]:
    """Distinct prompt+reply sequences of the pairs, a seeded subset of at most max_samples."""
    seqs = render_side(tok, pairs, "chosen")[0] + render_side(tok, pairs, "rejected")[0]
    seqs = list({tuple(s): s for s in seqs}.values())  # distinct token sequences, first seen
    order = np.random.default_rng(seed).permutation(len(seqs))[:max_samples]
    return [seqs[i] for i in sorted(order)]


def normalisation_extras(scorer, params, seqs, cfg) -> dict:
    raw = scorer(params, seqs)
    norm = fit_normalisation(raw, cfg.target_mean, cfg.target_std)
    return {
        "reward_gain": norm.gain,
        "reward_bias": norm.bias,
        "reward_raw_mean": float(raw.mean()),
        "reward_raw_std": float(raw.std()),
        "reward_norm_samples": len(seqs),
    }


# ---------------------------------------------------------------------- loading for others


def load_run_config(run_dir: str) -> ml_collections.ConfigDict:
    """The resolved config a run folder was trained with (config.json)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_reward_model(run_dir: str, setup, what: str = "reward_from") -> tuple:
    """(params, Normaliser) of a finished reward run; the normaliser maps raw → g·raw + b.
    `what` names the config key or flag that gave run_dir (for the error message)."""
    ckpt_dir = os.path.join(run_dir, "ckpt")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(
            f"{what}={run_dir!r}: no checkpoint folder {ckpt_dir} (train the reward model "
            "first, or point the config at its run)")
    shardings, abstract = setup.param_shardings("scalar")
    params, extras = load_params(ckpt_dir, abstract_like(abstract, shardings))
    if "reward_gain" not in extras or "reward_bias" not in extras:
        raise ValueError(
            f"{run_dir}: checkpoint has no reward normalisation (extras "
            f"{sorted(extras)}): did the reward run finish?"
        )
    return params, Normaliser(float(extras["reward_gain"]), float(extras["reward_bias"]))


def make_reward_fn(setup, params, norm: Normaliser):
    """batch {tokens, positions, segment_ids} [B, L] (left or right padded; B a multiple of the
    mesh's batch shards) -> normalised rewards [B], read at each row's last real token."""
    model = setup.model("scalar")
    shardings, _ = setup.param_shardings("scalar")
    fn = jax.jit(
        lambda p, b: norm(score_sequences(model, p, b)),
        in_shardings=(shardings, pipeline.batch_sharding(setup.mesh)),
        out_shardings=sharding.replicated(setup.mesh),
    )

    def reward_fn(batch):
        with sharding.activate(setup.mesh, setup.rules):
            return fn(params, batch)

    return reward_fn


# ---------------------------------------------------------------------- the stage


def preference_paths(config) -> tuple[list[str], list[str]]:
    """(train files, held-out files); "" means the collection folder's files, "none" none."""

    def split(value, default):
        value = value or os.path.join(config.collect.out, default)
        return [] if value == "none" else [p for p in value.split(",") if p]

    return (
        split(config.data.preferences, "train.jsonl"),
        split(config.data.heldout, "heldout.jsonl"),
    )


def read_sets(paths, key: str, max_bad_fraction: float) -> list:
    pairs = []
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{key}: {path} does not exist (collect preferences first: "
                "python -m scripts.collect_preferences --config ...)"
            )
        pairs += prefs.read_preferences(path, max_bad_fraction)
    return pairs


def init_from_sft(sft_params: dict, fresh_params: dict) -> dict:
    """Reward params: every trunk entry from SFT, the fresh `score` head; the LM head dropped."""
    missing = [k for k in fresh_params if k != "score" and k not in sft_params]
    if missing:
        raise ValueError(f"SFT params lack {missing}: not the same model as the reward config")
    return {k: (fresh_params[k] if k == "score" else sft_params[k]) for k in fresh_params}


def run(config, workdir: str):
    t0, data = time.time(), config.data
    tok = load_tokenizer(data.tokenizer)
    check_vocab(tok, config.model.vocab_size)
    train_paths, heldout_paths = preference_paths(config)
    train_pairs = read_sets(train_paths, "data.preferences", data.max_bad_fraction)
    heldout_pairs = read_sets(heldout_paths, "data.heldout", data.max_bad_fraction)
    _warn_shared_prompts(train_pairs, heldout_pairs)
    arrays, truncated = encode_pairs(tok, train_pairs, data.seq_len)
    train_cfg = ml_collections.ConfigDict(config.train.to_dict())
    train_cfg.steps = config.train.steps or math.ceil(
        data.epochs * len(train_pairs) / data.batch_size
    )
    setup = setup_lib.make_setup(config)
    fresh, params_sh = setup.init_params(config.seed, head="scalar")
    params = init_from_sft(load_lm_params(config.init_from, setup)[0], fresh)
    state, state_sh, tx = setup_lib.make_train_state(
        setup, params, params_sh, config.optim, train_cfg.steps, config.seed
    )
    step_fn = make_train_step(
        make_reward_loss(setup.model("scalar"), config.margin),
        tx,
        config.optim.grad_accum,
        state_sh,
        setup.mesh,
        setup.rules,
    )
    scorer = Scorer(setup, params_sh, config.eval.batch_size, data.seq_len, tok.pad_id)
    eval_fn = make_pair_eval(scorer, tok, heldout_pairs, config.margin) if heldout_pairs else None
    init_eval = eval_fn(params) if eval_fn else {}  # the SFT trunk with a fresh head
    norm_seqs = normalisation_sample(tok, train_pairs, config.normalise.max_samples, config.seed)
    cfg, rows = setup.model_cfg, 2 * data.batch_size * data.seq_len
    hooks = Hooks(
        eval_fn=eval_fn,
        final_extras_fn=lambda p: normalisation_extras(scorer, p, norm_seqs, config.normalise),
        tokens_per_step=rows,  # no LM head: its 6·d·V FLOPs per token are not spent
        flops_per_step=rows
        * (cfg.flops_per_token(data.seq_len) - 6.0 * cfg.d_model * cfg.vocab_size),
        peak_flops=setup_lib.total_peak_flops(),
    )
    result = fit(
        workdir=workdir,
        cfg=train_cfg,
        state=state,
        state_sh=state_sh,
        step_fn=step_fn,
        data_iter=PairIterator(arrays, data.batch_size, setup.mesh, config.seed),
        hooks=hooks,
        run_config=config,
    )
    if not result.interrupted:
        write_summary(
            workdir, result, init_eval, train_pairs, heldout_pairs, truncated, time.time() - t0
        )
    return result


def _warn_shared_prompts(train_pairs, heldout_pairs):
    seen = {json.dumps(p.prompt) for p in train_pairs}
    shared = sum(json.dumps(p.prompt) in seen for p in heldout_pairs)
    if shared:
        print(f"warning: {shared} held-out pairs have a prompt that also occurs in training")


def write_summary(workdir, result, init_eval, train_pairs, heldout_pairs, truncated, wall_s):
    ev = result.last_eval
    summary = {
        "heldout_accuracy": ev.get("accuracy", math.nan),
        "heldout_accuracy_gold": ev.get("accuracy_gold", math.nan),
        "heldout_accuracy_gold_clear": ev.get("accuracy_gold_clear", math.nan),
        "heldout_clear_pairs": int(ev.get("clear_pairs", 0)),
        "heldout_loss": ev.get("loss", math.nan),
        "heldout_pairs": len(heldout_pairs),
        "heldout_gold_pairs": int(ev.get("gold_pairs", 0)),
        "init_heldout_accuracy": init_eval.get("accuracy", math.nan),
        "init_heldout_accuracy_gold": init_eval.get("accuracy_gold", math.nan),
        # how often the held-out LABELS agree with gold: what a perfect label-fitter scores
        "heldout_label_gold_agreement": label_gold_agreement(heldout_pairs),
        "train_pairs": len(train_pairs),
        "truncated_sequences": truncated,
        "annotators": sorted({p.annotator for p in train_pairs}),
        "steps": result.step,
        "wall_s": wall_s,
        **{k: v for k, v in result.extras.items() if k.startswith("reward_")},
    }
    write_json(os.path.join(workdir, "summary.json"), summary)
    print(
        f"reward model: {len(train_pairs)} training pairs ({', '.join(summary['annotators'])}),"
        f" {result.step} steps, {wall_s:.0f}s"
    )
    print(
        f"held-out ({len(heldout_pairs)} pairs): accuracy vs labels "
        f"{summary['heldout_accuracy']:.3f} (init {summary['init_heldout_accuracy']:.3f}), "
        f"vs gold {summary['heldout_accuracy_gold']:.3f} on {summary['heldout_gold_pairs']} "
        f"pairs (init {summary['init_heldout_accuracy_gold']:.3f}; the labels agree with "
        f"gold on {summary['heldout_label_gold_agreement']:.3f}), vs gold on the "
        f"{summary['heldout_clear_pairs']} pairs with |gold difference| >= {CLEAR_GOLD} "
        f"{summary['heldout_accuracy_gold_clear']:.3f}"
    )
    return summary

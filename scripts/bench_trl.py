"""Hugging Face TRL's PPO trainer (trl 1.12, trl.experimental.ppo) on jaxchat's PPO iteration.

Benchmark-only (requirements-bench.txt). The same work as scripts/bench_ppo.py: a Llama of the
named size (the LlamaConfig model/hf/config.py exports for it; random init, fp32) in four roles —
actor, reference (a copy of the actor), critic and reward model (LlamaForSequenceClassification,
one label) —, the same random prompts (bench_jax.random_prompts, left-padded), the settings of
configs/ppo/tiny.py (temperature, KL coefficient and estimator, clip ranges, vf_coef, γ, λ,
4 epochs × 2 minibatches, advantage whitening, AdamW β (0.9, 0.999), ε 1e-5, no weight decay,
the actor's lr) and the stop token <|end|> = 7, pad 0 (stop=False: no stop token). TRL's own
`PPOTrainer.train()` runs one iteration per call (total_episodes = the batch). Its phases are
timed by wrapping, for the call only, functions train() looks up, without changing its work:
rollout = `batch_generation`; score = from its return to the end of the advantage whitening
(`masked_whiten`), so it holds the advantages too, as jaxchat's; update = from there to the
first `gather_for_metrics` (the metrics block after the last minibatch); other = the rest of
the call: train()'s preamble, the shuffled DataLoader + padding collator, metrics (.item()),
log, lr scheduler, gc. jaxchat's timed iteration has no such "other" (bench_ppo passes ready
arrays; train/ppo.py logs outside the phases), so "rollout + score + update" is the like-for-
like sum; "iteration" is the whole train() call.

Differences in work, read from trl/experimental/ppo/ppo_trainer.py against train/ppo_phases.py
and train/rl_math.py:
- Old log-probs: TRL takes them from the sampler (generate(output_scores=True) keeps the
  tempered [B, T, V] logits of every decode step; they are stacked and log-softmaxed, a Python
  loop over rows); jaxchat recomputes them with a full actor forward (plus its entropy) in the
  score phase. So the score phase runs 3 forwards in TRL (reference LM, critic and reward
  backbones + score heads) and 4 in jaxchat (actor LM, reference LM, critic, reward).
- Sampling: HF generate (eager, DynamicCache grown each step, temperature warper; top_k 0,
  top_p 1 are off) stops a row at the stop id and the loop once every row has stopped, as
  jaxchat's while_loop. TRL then truncates after the first stop token; pad id 0 marks padding
  everywhere (attention masks, lengths, the reward index), so a sampled 0 (random weights: ~1
  per rollout) ends a reply for TRL's scoring and masks; jaxchat's lengths come from the sampler.
- Update, per minibatch: TRL's PolicyAndValueWrapper runs policy and value forwards, ONE
  backward of pg_loss + vf_coef · vf_loss and ONE fused torch AdamW (policy + value parameters,
  one learning rate: the actor's 1e-4; jaxchat's critic has 1e-3); jaxchat computes two
  gradients and steps two optax optimizers (actor, critic). TRL never clips gradients here (no
  clip_grad_norm_ in the loop; max_grad_norm is unused); jaxchat clips each at global norm 1.
  TRL also takes the full-vocabulary entropy of every minibatch (a statistic, no gradient);
  jaxchat takes the entropy once, in the score phase.
- Batch layout: TRL's rollout is per_device_train_batch_size × gradient_accumulation_steps,
  and accelerate would then accumulate micro-batches across minibatch boundaries; so here
  per_device_train_batch_size = the rollout batch, gradient_accumulation_steps = 1: each
  minibatch of B / 2 is one micro-batch and one optimizer step (8 per iteration, checked), as
  jaxchat's grad_accum 1.
- Rewards: both put −β·kl (k1: logp − ref_logp) on every reply token. TRL adds the score one
  position AFTER the last reply token when the reply ended early (sequence_length + 1) and keeps
  that position in the values and the value loss; jaxchat adds it at the last reply token (the
  stop token included) and masks everything after it. Both read the reward model at the last
  reply token. Missing stop token: TRL's missing_eos_penalty subtracts 1 from the score,
  jaxchat's EOS trick replaces it by −1 (same cost).
- GAE: a Python loop over the T reply columns (small torch ops) vs jaxchat's lax.scan; the
  advantage whitening is the same (unbiased masked variance, eps 1e-8).
- TRL runs gc.collect() twice per iteration — once in the score phase, once in other — and
  empty_cache() (a no-op on CPU) several times. A collection walks the whole heap of the process
  (~0.5M objects here: torch/transformers/trl's, and jaxchat's); its time is reported apart.
- HF Llama runs SDPA attention with an explicit padding mask; jaxchat einsum attention with
  segment masks (query-chunked where there is no KV cache). Dropout is off on both sides; TRL's
  default activation checkpointing and bf16 are off (jaxchat: remat none, fp32). Learning
  rate: constant here (TRL's default decays linearly), jaxchat warms up then stays constant;
  the cost is the same.
"""

import os

# Set before torch loads libgomp: OpenMP's active spin-wait collapses on 2 shared cores (see
# scripts/bench_torch.py). No hub: everything is built in memory and telemetry stays off.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # trl.experimental's import warning

import contextlib  # noqa: E402
import copy  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

END_ID, PAD_ID = 7, 0  # as scripts/bench_ppo.py


def llama_config(cfg, head="lm"):
    """transformers LlamaConfig of a jaxchat ModelConfig, by jaxchat's own export mapping
    (model/hf/config.py; head "scalar": one label, for LlamaForSequenceClassification)."""
    from transformers import LlamaConfig

    from model.hf.config import hf_config

    ids = dict(pad_token_id=PAD_ID, eos_token_id=END_ID, bos_token_id=None)
    return LlamaConfig.from_dict(hf_config(cfg, "LlamaForCausalLM", "float32", ids, head=head))


def tokenizer(vocab_size: int):
    """An in-memory tokenizer over ids 0..V-1 (pad 0, eos 7, left padding as TRL expects)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t1"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=f"t{PAD_ID}",
        eos_token=f"t{END_ID}",
        unk_token="t1",
        padding_side="left",
    )


def prompt_dataset(prompts):
    """datasets.Dataset of input_ids: the rows of bench_jax.random_prompts without padding."""
    from datasets import Dataset

    tokens, _, segment_ids = (np.asarray(x) for x in prompts)
    rows = [t[s != 0].tolist() for t, s in zip(tokens, segment_ids)]
    return Dataset.from_dict({"input_ids": rows})


def ppo_config(config, batch: int, new_tokens: int, stop: bool, out_dir: str):
    """PPOConfig doing jaxchat's iteration (configs/ppo/tiny.py `config`) once per train()."""
    from trl.experimental.ppo import PPOConfig

    p, o = config.ppo, config.optim
    return PPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=batch,  # = the rollout (see the module docstring)
        gradient_accumulation_steps=1,
        num_mini_batches=p.minibatches,
        num_ppo_epochs=p.epochs,
        total_episodes=batch,  # one iteration per train() call
        local_rollout_forward_batch_size=batch,  # one forward per role, as jaxchat
        response_length=new_tokens,
        temperature=config.rollout.temperature,
        stop_token_id=END_ID if stop else None,
        missing_eos_penalty=-p.eos_penalty if p.eos_trick else None,
        kl_coef=config.kl.coef,
        kl_estimator=config.kl.estimator,
        cliprange=p.clip_eps,
        cliprange_value=p.value_clip,
        vf_coef=p.vf_coef,
        gamma=p.gamma,
        lam=p.lam,
        whiten_rewards=p.whiten_rewards,
        learning_rate=o.lr,
        lr_scheduler_type="constant",
        adam_beta1=o.b1,
        adam_beta2=o.b2,
        adam_epsilon=o.eps,
        weight_decay=o.weight_decay,
        bf16=False,
        fp16=False,
        activation_checkpointing=False,  # (TRL's config defaults to checkpointing)
        use_cpu=True,
        num_sample_generations=0,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        logging_strategy="no",
        dataloader_num_workers=0,
        seed=0,
    )


class PhaseClock:
    """Marks the phase boundaries of one train() call by wrapping what it calls (`during`)."""

    def __init__(self, trainer, stop_id):
        self.trainer, self.stop_id = trainer, stop_id
        self.marks, self.responses, self.steps = {}, None, 0
        trainer.optimizer.optimizer.register_step_post_hook(self._count_step)

    def _count_step(self, *_):
        self.steps += 1

    @contextlib.contextmanager
    def during(self):
        """Wrappers installed for one call only, so nothing stays patched between calls."""
        from trl.experimental.ppo import ppo_trainer as pt

        generate, whiten, gc = pt.batch_generation, pt.masked_whiten, pt.gc
        accelerator = self.trainer.accelerator
        gather = accelerator.gather_for_metrics

        def batch_generation(model, queries, *args, **kwargs):
            self.marks["rollout_start"] = time.perf_counter()
            out = generate(model, queries, *args, **kwargs)
            self.marks["rollout_end"] = time.perf_counter()
            self.responses = out[0][:, queries.shape[1] :]
            return out

        def masked_whiten(*args, **kwargs):  # the advantages' whitening ends the score phase
            out = whiten(*args, **kwargs)
            self.marks["score_end"] = time.perf_counter()
            return out

        def gather_for_metrics(*args, **kwargs):  # the first one (metrics) ends the update
            self.marks.setdefault("update_end", time.perf_counter())
            return gather(*args, **kwargs)

        def collect(*args):  # its time is reported apart (it falls in score and other)
            start = time.perf_counter()
            out = gc.collect(*args)
            self.marks["gc"] = self.marks.get("gc", 0.0) + time.perf_counter() - start
            return out

        self.marks, self.steps = {"start": time.perf_counter()}, 0
        pt.batch_generation, pt.masked_whiten = batch_generation, masked_whiten
        pt.gc = types.SimpleNamespace(collect=collect)  # the module's `gc`, not the global one
        accelerator.gather_for_metrics = gather_for_metrics
        try:  # train() prints a banner each call: kept off the benchmark's tables
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            pt.batch_generation, pt.masked_whiten, pt.gc = generate, whiten, gc
            del accelerator.gather_for_metrics  # the bound method again
            self.marks["end"] = time.perf_counter()

    def phases(self) -> dict:
        m = self.marks
        times = {
            "rollout": m["rollout_end"] - m["rollout_start"],
            "score": m["score_end"] - m["rollout_end"],
            "update": m["update_end"] - m["score_end"],
        }
        times["other"] = m["end"] - m["start"] - sum(times.values())
        times["gc"] = m.get("gc", 0.0)  # part of score and other, not a phase of its own
        return times


def _reply_lengths(responses, stop_id) -> float:
    """Mean reply length: up to and including the first stop token (else the whole width)."""
    if stop_id is None:
        return float(responses.shape[1])
    hit = responses == stop_id
    first = torch.where(hit.any(1), hit.int().argmax(1) + 1, responses.shape[1])
    return float(first.float().mean())


def trl_ppo_runner(cfg, config, prompts, *, stop=True, seed=0):
    """(run, setup seconds): run() does one TRL PPO iteration and returns (seconds per phase,
    mean reply length). `config` is configs/ppo/tiny.py's with rollout.batch_size and
    max_new_tokens set as for jaxchat (scripts/bench_ppo.settings)."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification
    from trl.experimental.ppo import PPOTrainer

    start = time.perf_counter()
    torch.manual_seed(seed)
    policy = LlamaForCausalLM(llama_config(cfg))
    reference = copy.deepcopy(policy).eval()  # jaxchat's reference is a copy of the actor
    critic = LlamaForSequenceClassification(llama_config(cfg, head="scalar"))
    reward = LlamaForSequenceClassification(llama_config(cfg, head="scalar")).eval()
    out_dir = tempfile.mkdtemp(prefix="bench_trl_")
    r = config.rollout
    with warnings.catch_warnings():  # transformers 5's renames, inside TRL's own code
        warnings.simplefilter("ignore", FutureWarning)
        trainer = PPOTrainer(
            args=ppo_config(config, r.batch_size, r.max_new_tokens, stop, out_dir),
            processing_class=tokenizer(cfg.vocab_size),
            model=policy,
            ref_model=reference,
            reward_model=reward,
            train_dataset=prompt_dataset(prompts),
            value_model=critic,
        )
    shutil.rmtree(out_dir)  # made empty by the trainer; with saving off nothing writes there
    _quiet(trainer)
    clock = PhaseClock(trainer, END_ID if stop else None)
    expected = config.ppo.epochs * config.ppo.minibatches

    def run():
        with clock.during():
            trainer.train()
        times = clock.phases()
        if clock.steps != expected:
            raise RuntimeError(f"bench: TRL made {clock.steps} optimizer steps, not {expected}")
        return times, _reply_lengths(clock.responses, clock.stop_id)

    return run, time.perf_counter() - start


def _quiet(trainer):
    """No per-iteration log lines: the printer and progress callbacks go."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)

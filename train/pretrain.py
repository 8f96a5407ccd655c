"""Stage 1 — pretraining: next-token prediction on a mixture of raw text.

    python -m scripts.train --config configs/pretrain/tiny.py --workdir runs/pretrain_tiny

Reads top to bottom: tokenizer → corpus → packed grain stream → sharded state → fit() →
summary (validation loss against the corpus's unigram entropy, the mixture table, samples).
"""

import math
import os

import jax
import numpy as np

from data import corpus as corpus_lib
from data import corpus_cache, pipeline
from data.tokenizer import Tokenizer, check_vocab, load_tokenizer, train_tokenizer
from model import sampler
from train import distributed, losses
from train import setup as setup_lib
from train.loop import Hooks, fit
from train.metrics import atomic_write, write_json
from train.step import make_eval_step, make_train_step

SAMPLE_PROMPTS = ("To be, or not to be", "KING HENRY:", "How are you doing today?", "I think")


def run(config, workdir: str):
    data = config.data
    write_cache = distributed.is_primary()
    corpus, corpus_key = load_corpus(data, write_cache)
    tok = load_or_train_tokenizer(data, corpus)
    check_vocab(tok, config.model.vocab_size)
    train_docs, val_docs = corpus_cache.cached_tokens(
        lambda: tokenize_corpus(tok, corpus), corpus_key, corpus, data.tokenizer,
        data.cache_dir or None, write_cache)
    count_train_tokens(corpus, train_docs)
    setup = setup_lib.make_setup(config)
    model = setup.model()
    params, params_sh = setup.init_params(config.seed)
    state, state_sh, tx = setup_lib.make_train_state(
        setup, params, params_sh, config.optim, config.train.steps, config.seed)
    loss_fn = losses.make_lm_loss(model, config.get("z_loss", 0.0))
    step_fn = make_train_step(loss_fn, tx, config.optim.grad_accum, state_sh, setup.mesh,
                              setup.rules)
    train_iter = pipeline.make_batch_iterator(
        pipeline.make_lm_dataset(train_docs, corpus.weights, data.seq_len, config.seed),
        data.batch_size, setup.mesh)
    hooks = Hooks(
        eval_fn=make_lm_eval(loss_fn, params_sh, setup, val_docs, data, config.train.eval_batches),
        sample_fn=make_sample_fn(setup, tok, config.train.sample_tokens),
        tokens_per_step=data.batch_size * data.seq_len,
        flops_per_step=data.batch_size * data.seq_len * setup.model_cfg.flops_per_token(
            data.seq_len),
        peak_flops=setup_lib.total_peak_flops(),
    )
    result = fit(workdir=workdir, cfg=config.train, state=state, state_sh=state_sh,
                 step_fn=step_fn, data_iter=train_iter, hooks=hooks, run_config=config)
    if not result.interrupted:
        write_summary(workdir, config, corpus, tok, train_docs, result)
    return result


def load_corpus(data, write_cache: bool = True):
    """(corpus, cache key): the cleaned, split mixture, from data/corpus_cache.py when a
    previous run built the same one (key None: the cache is off)."""
    mixture, cache_dir = corpus_lib.parse_mixture(data.mixture), data.cache_dir or None
    settings = dict(val_fraction=data.val_fraction, seed=data.split_seed,
                    max_chars_per_source=data.max_chars_per_source or None)
    return corpus_cache.cached_corpus(mixture, cache_dir, write_cache, **settings)


def load_or_train_tokenizer(data, corpus) -> Tokenizer:
    """The tokenizer at data.tokenizer; trained on the corpus first if it does not exist."""
    if not os.path.exists(data.tokenizer):
        prefix = data.tokenizer.removesuffix(".model")
        print(f"training tokenizer {data.tokenizer} (vocab {data.vocab_size})")
        train_tokenizer(corpus.train_texts(), data.vocab_size, prefix)
    return load_tokenizer(data.tokenizer)


def tokenize_corpus(tok: Tokenizer, corpus):
    """Per source: train and validation documents as int32 arrays ending with eos."""
    def encode(docs):
        return [np.asarray(ids + [tok.eos_id], np.int32) for ids in tok.encode_batch(docs)]

    train = {name: encode(s.train) for name, s in corpus.splits.items()}
    val = {name: encode(s.val) for name, s in corpus.splits.items() if s.val}
    if not val:
        raise ValueError("no validation documents: every source is too small to hold out a "
                         "whole document (add documents or raise data.val_fraction)")
    return train, val


def count_train_tokens(corpus, train_docs) -> None:
    for name in corpus.splits:
        corpus.splits[name].train_tokens = int(sum(len(d) for d in train_docs[name]))


def make_lm_eval(loss_fn, params_sh, setup, val_docs, data, max_batches):
    """Validation loss (nats/token) over the first max_batches batches of the held-out docs."""
    eval_step = make_eval_step(loss_fn, params_sh, setup.mesh, setup.rules)
    dataset = pipeline.make_lm_eval_dataset(val_docs, data.seq_len)
    batches = []
    for batch in pipeline.make_batch_iterator(dataset, data.batch_size, setup.mesh):
        batches.append(batch)
        if len(batches) == max_batches:
            break

    def eval_fn(params):
        sums = [eval_step(params, b) for b in batches]
        total = {k: sum(float(s[k]) for s in sums) for k in sums[0]}
        return {"loss": total["loss"] / max(total["weight"], 1.0), "tokens": total["weight"]}

    return eval_fn


def make_sample_fn(setup, tok, max_new_tokens, temperature=0.8, top_k=40):
    generate = sampler.make_generate(
        setup.model_cfg, max_new_tokens, temperature=temperature, top_k=top_k,
        stop_ids=(tok.eos_id,), pad_id=tok.pad_id, mesh=setup.mesh, rules=setup.rules)
    bos = [] if tok.bos_id is None else [tok.bos_id]  # Qwen2's tokenizer has none
    prompts = [bos + tok.encode(p) for p in SAMPLE_PROMPTS]

    def sample_fn(params, step):
        out = generate(params, *sampler.left_pad(prompts, tok.pad_id), jax.random.key(step))
        texts = [tok.decode(list(np.asarray(row))) for row in out.tokens_BxT]
        return "\n".join([f"# step {step}"] + [f"{p!r} → {t!r}"
                                               for p, t in zip(SAMPLE_PROMPTS, texts)])

    return sample_fn


def unigram_entropy(docs_by_source: dict) -> float:
    """Entropy (nats/token) of the training tokens' unigram distribution: a loss to beat."""
    counts = np.bincount(np.concatenate([np.concatenate(d) for d in docs_by_source.values()]))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def write_summary(workdir, config, corpus, tok, train_docs, result):
    tokens = config.train.steps * config.data.batch_size * config.data.seq_len
    table = corpus_lib.mixture_table(corpus, corpus_lib.tokens_drawn(tokens, corpus.weights))
    summary = {
        "val_loss": result.last_eval.get("loss", math.nan),
        "unigram_entropy": unigram_entropy(train_docs),
        "train_tokens": tokens,
        "steps": result.step,
    }
    atomic_write(os.path.join(workdir, "mixture.md"),
                 table + "\n\n" + "\n".join(corpus.attributions) + "\n")
    write_json(os.path.join(workdir, "summary.json"), summary)  # last: marks the stage done
    print(table)
    print(f"validation loss {summary['val_loss']:.3f} nats/token vs unigram entropy "
          f"{summary['unigram_entropy']:.3f} nats/token")

r"""Trains the SentencePiece BPE tokenizer on a text mixture.

  python -m scripts.train_tokenizer --sources shakespeare,milton,chitchat,chatterbot,botchan \
      --vocab_size 2048 --out cache/tokenizers/default

Writes <out>.model and <out>.vocab (atomically) and prints the corpus it read, the time it
took and the mixture table for the given number of training tokens. Only training documents
are used: the validation split stays unseen. Sources are fetched into the cache on first use.
"""

import time

from absl import app, flags

from data import corpus, corpus_cache, sources, tokenizer
from train import cli

_SOURCES = flags.DEFINE_string(
    "sources", ",".join(sources.DEFAULT_SOURCES),
    "Comma-separated mixture: name or name=weight; local:<path> for your own files.",
)
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 2048, "Total vocabulary size.")
_OUT = flags.DEFINE_string("out", None, "Output prefix: writes <out>.model and <out>.vocab.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Source cache (default $JAXCHAT_CACHE, "
                                 "else cache/data).")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.01, "Documents held out (not trained on).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the holdout, caps and sentence sampling.")
_MAX_CHARS = flags.DEFINE_integer("max_chars_per_source", None, "Optional cap per source.")
_INPUT_SENTENCES = flags.DEFINE_integer(
    "input_sentence_size", 300_000, "Lines sampled for training (0: all)."
)
_TABLE_TOKENS = flags.DEFINE_integer(
    "table_tokens", 0, "If > 0: print the mixture table for this many training tokens."
)
flags.mark_flag_as_required("out")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    mixture = corpus.parse_mixture(_SOURCES.value)
    start = time.perf_counter()
    settings = dict(val_fraction=_VAL_FRACTION.value, seed=_SEED.value,
                    max_chars_per_source=_MAX_CHARS.value)
    data, _ = corpus_cache.cached_corpus(mixture, _CACHE_DIR.value, True, **settings)
    print(f"loaded {len(mixture)} sources in {time.perf_counter() - start:.1f}s "
          f"(cache {sources.resolve_cache_dir(_CACHE_DIR.value)}; dropped "
          f"{data.duplicates_removed} duplicate documents, {data.paragraphs_removed} repeated "
          f"paragraphs)")
    print(corpus.corpus_summary(data))
    start = time.perf_counter()
    path = tokenizer.train_tokenizer(
        data.train_texts(), _VOCAB_SIZE.value, _OUT.value,
        input_sentence_size=_INPUT_SENTENCES.value, seed=_SEED.value,
    )
    print(f"trained BPE vocab {_VOCAB_SIZE.value} in {time.perf_counter() - start:.1f}s "
          f"-> {path} (+ .vocab)")
    tok = tokenizer.Tokenizer(path)
    if _TABLE_TOKENS.value > 0:
        used = corpus.tokens_drawn(_TABLE_TOKENS.value, data.weights)
        print(corpus.mixture_table(data, used, tok))
    else:
        data.count_tokens(tok)
        for name, split in data.splits.items():
            print(f"{name}: {split.train_tokens:,} train tokens "
                  f"({split.train_chars / max(split.train_tokens, 1):.2f} chars/token)")


if __name__ == "__main__":
    cli.run(main)

"""Pretraining mixtures: sources with sampling weights, cleaned, deduplicated and split.

A mixture is reported like Table 1 of the LLaMA paper (Touvron et al. 2023): for each source
the proportion of training tokens drawn from it, the number of epochs that means, and its size.
With T training tokens and weights w_s, source s contributes T_s = T * w_s / sum(w) tokens
(`tokens_drawn`), i.e. T_s / N_s epochs over its N_s training tokens.
"""

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from data import sources, textclean

Mixture = list[tuple[str, float]]  # (source name, sampling weight)


def parse_mixture(spec: str) -> Mixture:
    """'shakespeare=3,chitchat=1' or 'shakespeare,chitchat' (weight 1) -> Mixture.

    '=' separates the weight because local sources contain ':' ('local:/data/x.jsonl=2').
    """
    mixture = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, weight = item.rpartition("=") if "=" in item else (item, "", "1")
        try:
            mixture.append((name.strip(), float(weight)))
        except ValueError:
            raise ValueError(f"mixture item {item!r}: weight {weight!r} is not a number") from None
    return mixture


def validate_mixture(mixture: Mixture) -> None:
    if not mixture:
        raise ValueError("mixture is empty: name at least one source")
    names = [name for name, _ in mixture]
    if len(set(names)) != len(names):
        raise ValueError(f"mixture names a source twice: {names}")
    for name, weight in mixture:
        if not weight > 0:
            raise ValueError(f"mixture source {name!r}: weight must be > 0, got {weight}")


@dataclass
class SourceSplit:
    """One source of a corpus: its weight and whole-document train/validation split."""

    name: str
    weight: float
    train: list[str]
    val: list[str]
    train_tokens: int | None = None  # filled by Corpus.count_tokens
    val_tokens: int | None = None

    @property
    def train_chars(self) -> int:
        return sum(len(d) for d in self.train)

    @property
    def val_chars(self) -> int:
        return sum(len(d) for d in self.val)

    @property
    def train_bytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.train)


@dataclass
class Corpus:
    splits: dict[str, SourceSplit]  # in mixture order
    val_fraction: float
    seed: int
    duplicates_removed: int = 0  # documents equal to one of an earlier source
    paragraphs_removed: int = 0  # repeated long paragraphs
    attributions: list[str] = field(default_factory=list)

    @property
    def weights(self) -> dict[str, float]:
        return {name: s.weight for name, s in self.splits.items()}

    def train_texts(self) -> Iterator[str]:
        for split in self.splits.values():
            yield from split.train

    def count_tokens(self, tokenizer) -> None:
        """Fills train_tokens/val_tokens of every source (tokenizer: data.tokenizer.Tokenizer)."""
        for split in self.splits.values():
            split.train_tokens = sum(len(ids) for ids in tokenizer.encode_batch(split.train))
            split.val_tokens = sum(len(ids) for ids in tokenizer.encode_batch(split.val))


def load_mixture(
    sources_weights: Mixture,
    cache_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.01,
    seed: int = 0,
    max_chars_per_source: int | None = None,
    min_paragraph_chars: int = 200,
) -> Corpus:
    """Loads, cleans, deduplicates, caps and splits every source of the mixture.

    Order of operations, per source in mixture order:
      1. load_documents: boilerplate removed, whitespace normalised, in-source exact dedup;
      2. exact dedup against earlier sources, then removal of long paragraphs (>=
         min_paragraph_chars) already seen anywhere (so earlier sources keep the copy);
      3. optional deterministic cap to max_chars_per_source characters (textclean.cap_chars);
      4. whole-document holdout of val_fraction (textclean.split_holdout, by hash and seed).
    Raises ValueError naming the source if nothing of it is left.
    """
    validate_mixture(sources_weights)
    seen_docs: set[str] = set()
    seen_paragraphs: set[str] = set()
    splits, attributions = {}, []
    duplicates = paragraphs = 0
    for name, weight in sources_weights:
        docs = sources.load_documents(name, cache_dir)
        unique = textclean.drop_duplicate_docs(docs, seen_docs)
        duplicates += len(docs) - len(unique)
        docs, removed = textclean.drop_repeated_paragraphs(
            unique, seen_paragraphs, min_paragraph_chars
        )
        paragraphs += removed
        if not docs:
            where = sources.describe(name, cache_dir)
            msg = f"source {name!r}: every document duplicates an earlier source ({where})"
            raise ValueError(msg)
        if max_chars_per_source is not None:
            docs = textclean.cap_chars(docs, max_chars_per_source, seed)
        train, val = textclean.split_holdout(docs, val_fraction, seed)
        splits[name] = SourceSplit(name, float(weight), train, val)
        if name in sources.SOURCES:
            attributions.append(f"{name}: {sources.SOURCES[name].attribution}")
        else:
            attributions.append(f"{name}: user-supplied file(s)")
    return Corpus(splits, val_fraction, seed, duplicates, paragraphs, attributions)


def tokens_drawn(total_tokens: int, weights: dict[str, float]) -> dict[str, int]:
    """Training tokens drawn from each source: T_s = T * w_s / sum(w), in whole tokens.

    Rounded by largest remainder so the counts add up to total_tokens exactly.
    """
    norm = sum(weights.values())
    exact = {name: total_tokens * w / norm for name, w in weights.items()}
    drawn = {name: int(x) for name, x in exact.items()}
    by_remainder = sorted(exact, key=lambda n: exact[n] - drawn[n], reverse=True)
    for name in by_remainder[: total_tokens - sum(drawn.values())]:
        drawn[name] += 1
    return drawn


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _megabytes(num_bytes: int) -> str:
    mb = num_bytes / 1e6
    return f"{mb:.0f} MB" if mb >= 100 else f"{mb:.1f} MB" if mb >= 10 else f"{mb:.2f} MB"


def mixture_table(corpus: Corpus, tokens_per_source_used: dict[str, int], tokenizer=None) -> str:
    """Markdown table in the style of LLaMA's Table 1: Source | Proportion used | Epochs | Size.

    Proportion used = T_s / sum_s T_s (share of training tokens drawn from s); Epochs = T_s / N_s
    with N_s the source's training-split tokens; Size = training split in MB (10^6 bytes of
    UTF-8) and tokens. Counts tokens with `tokenizer` unless the corpus already has counts.
    """
    if any(s.train_tokens is None for s in corpus.splits.values()):
        if tokenizer is None:
            raise ValueError("mixture_table needs token counts: pass a tokenizer")
        corpus.count_tokens(tokenizer)
    unknown = set(tokens_per_source_used) - set(corpus.splits)
    if unknown:
        raise ValueError(f"tokens_per_source_used names sources not in the corpus: {unknown}")
    total = sum(tokens_per_source_used.values())
    rows = ["| Source | Proportion used | Epochs | Size |", "|---|---:|---:|---:|"]
    for name, split in corpus.splits.items():
        used = tokens_per_source_used.get(name, 0)
        share = 100.0 * used / total if total else 0.0
        epochs = used / split.train_tokens if split.train_tokens else float("inf")
        size = f"{_megabytes(split.train_bytes)}, {_human(split.train_tokens)} tokens"
        rows.append(f"| {name} | {share:.1f}% | {epochs:.2f} | {size} |")
    return "\n".join(rows)


def corpus_summary(corpus: Corpus) -> str:
    """Markdown table of documents and characters per source and split."""
    rows = [
        "| Source | Weight | Train docs | Train chars | Val docs | Val chars |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in corpus.splits.items():
        rows.append(
            f"| {name} | {s.weight:g} | {len(s.train)} | {s.train_chars:,} | "
            f"{len(s.val)} | {s.val_chars:,} |"
        )
    return "\n".join(rows)


_WORD_RUN = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # letters, apostrophes inside


def common_words(texts: Iterable[str], n: int) -> list[str]:
    """The n most frequent words of `texts` that are lowercase ASCII letters only, after
    lowercasing: the task vocabulary ("words come from the corpus vocabulary").

    Words are runs of letters (contractions such as "don't" are one word and, holding an
    apostrophe, never qualify). Ties break alphabetically, so the list depends only on the
    texts. Fewer than n are returned when the texts hold fewer distinct words.
    """
    if n < 1:
        raise ValueError(f"common_words: n must be >= 1, got {n}")
    counts = Counter()
    for text in texts:
        counts.update(w for w in _WORD_RUN.findall(text.lower()) if w.isascii() and w.isalpha())
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [w for w, _ in ranked[:n]]

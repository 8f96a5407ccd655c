"""On-disk cache of the cleaned pretraining corpus and of its tokens, so a rerun (a resumed
stage, a sweep trial, a second `make pipeline`) skips reading, cleaning and tokenising the
sources (8 s of the tiny pretraining stage's start on a 2-core CPU, docs/performance.md).

    <data cache>/corpus/<key>.json          the Corpus: texts, split, counters, attributions
    <data cache>/corpus/<key>-<tok>.npz     its tokens: per source and split, ids and lengths

The key hashes everything the result depends on: the mixture and split settings, each
source's input files (path, size and modification time: a pinned archive or a user's file),
and the code of data/ (cleaning, splitting, tokenising). The token file adds a hash of the
tokenizer's contents. A changed input or code gives a new key, never a stale entry. Files are
written whole and renamed into place (a crash leaves no partial entry), by the caller that may
write (process 0 of a multi-process run); JSON and NumPy only, no pickle. Nothing evicts old
entries.

    JAXCHAT_CORPUS_CACHE=/a/folder   entries there instead
    JAXCHAT_CORPUS_CACHE=off         read and write nothing (always rebuild)
"""

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from data import corpus as corpus_lib
from data import sources
from data.corpus import Corpus, SourceSplit, validate_mixture

ENV = "JAXCHAT_CORPUS_CACHE"
FORMAT = 1  # bump when the stored layout changes
_DATA_CODE = Path(__file__).resolve().parent


def enabled() -> bool:
    return os.environ.get(ENV, "on").strip().lower() not in ("", "0", "off", "none", "false")


def folder(cache_dir) -> Path:
    """$JAXCHAT_CORPUS_CACHE when it names a folder, else <data cache>/corpus."""
    chosen = os.environ.get(ENV, "").strip()
    if chosen and chosen.lower() != "on" and enabled():
        return Path(chosen)
    return sources.resolve_cache_dir(cache_dir) / "corpus"


def _file_identity(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _source_inputs(name: str, cache_dir) -> list:
    if name.startswith(sources.LOCAL_PREFIX):
        return [_file_identity(p) for p in sources.local_paths(name)]
    return [_file_identity(sources.fetch(sources.get_source(name), cache_dir))]


def _code_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(_DATA_CODE.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def corpus_key(mixture, cache_dir, **settings) -> str:
    """Hex key of load_mixture(mixture, cache_dir, **settings) (fetches missing archives)."""
    validate_mixture(mixture)
    parts = {
        "format": FORMAT,
        "mixture": [[name, float(w), _source_inputs(name, cache_dir)] for name, w in mixture],
        "settings": settings,
        "code": _code_hash(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def tokenizer_key(tokenizer_path: str) -> str:
    """Hash of the tokenizer's contents (a .model file or a folder's files), not its path: each
    pipeline trains the same tokenizer into its own run folder."""
    path, digest = Path(tokenizer_path), hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        name = f.relative_to(path).as_posix() if path.is_dir() else ""
        digest.update(name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def _write_atomic(path: Path, write_to) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            write_to(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_corpus(path: Path, corpus: Corpus) -> None:
    record = {
        "val_fraction": corpus.val_fraction,
        "seed": corpus.seed,
        "duplicates_removed": corpus.duplicates_removed,
        "paragraphs_removed": corpus.paragraphs_removed,
        "attributions": corpus.attributions,
        "splits": [[s.name, s.weight, s.train, s.val] for s in corpus.splits.values()],
    }
    _write_atomic(path, lambda f: f.write(json.dumps(record).encode()))


def read_corpus(path: Path) -> Corpus:
    record = json.loads(path.read_text())
    splits = {name: SourceSplit(name, weight, train, val)
              for name, weight, train, val in record["splits"]}
    return Corpus(splits, record["val_fraction"], record["seed"], record["duplicates_removed"],
                  record["paragraphs_removed"], record["attributions"])


def save_tokens(path: Path, names: list[str], train: dict, val: dict) -> None:
    """Per source i (in `names` order) and split: concatenated ids and document lengths."""
    arrays = {}
    for i, name in enumerate(names):
        for split, docs in (("train", train.get(name)), ("val", val.get(name))):
            if docs is not None:
                arrays[f"{i}.{split}.ids"] = np.concatenate(docs) if docs else np.zeros(0, np.int32)
                arrays[f"{i}.{split}.lengths"] = np.asarray([len(d) for d in docs], np.int64)
    _write_atomic(path, lambda f: np.savez(f, **arrays))


def read_tokens(path: Path, names: list[str]) -> tuple[dict, dict]:
    out = {"train": {}, "val": {}}
    with np.load(path) as arrays:
        for i, name in enumerate(names):
            for split in ("train", "val"):
                if f"{i}.{split}.ids" in arrays:
                    ids, lengths = arrays[f"{i}.{split}.ids"], arrays[f"{i}.{split}.lengths"]
                    ends = np.cumsum(lengths)[:-1]
                    out[split][name] = np.split(ids, ends) if len(lengths) else []
    return out["train"], out["val"]


def _read_or_none(read, path: Path):
    """The entry, or None when there is none or it cannot be read (then it is rebuilt and
    rewritten: a damaged entry is never used)."""
    if not path.exists():
        return None
    try:
        return read(path)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        print(f"corpus cache: ignoring unreadable {path} ({type(e).__name__}: {e})")
        return None


def cached_corpus(mixture, cache_dir, write: bool, **settings):
    """(corpus, key): data.corpus.load_mixture(mixture, cache_dir, **settings), or its cached
    copy; key is None when the cache is off."""
    if not enabled():
        return corpus_lib.load_mixture(mixture, cache_dir, **settings), None
    key = corpus_key(mixture, cache_dir, **settings)
    path = folder(cache_dir) / f"{key}.json"
    corpus = _read_or_none(read_corpus, path)
    if corpus is None:
        corpus = corpus_lib.load_mixture(mixture, cache_dir, **settings)
        if write:
            save_corpus(path, corpus)
    return corpus, key


def cached_tokens(build, key, corpus: Corpus, tokenizer_path: str, cache_dir, write: bool):
    """(train, val) = build(), the per-source token documents of `corpus`, or their cached
    copy (key: cached_corpus's; None builds without the cache)."""
    if key is None:
        return build()
    names = list(corpus.splits)
    path = folder(cache_dir) / f"{key}-{tokenizer_key(tokenizer_path)}.npz"
    found = _read_or_none(lambda p: read_tokens(p, names), path)
    if found is not None:
        return found
    train, val = build()
    if write:
        save_tokens(path, names, train, val)
    return train, val

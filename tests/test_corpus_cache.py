"""The corpus cache (data/corpus_cache.py): a cached corpus and its tokens equal a fresh build,
and any change of input, setting or tokenizer builds again; damaged entries are rebuilt."""

import json

import numpy as np
import pytest

from data import corpus, corpus_cache


@pytest.fixture
def sources(tmp_path):
    docs = {
        "a.jsonl": [f"alpha document {i} " + "x" * (7 * i) for i in range(12)],
        "b.jsonl": [f"beta story {i}\n\nwith a second paragraph {i}" for i in range(9)],
    }
    for name, texts in docs.items():
        (tmp_path / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (tmp_path / "tok.model").write_bytes(b"a tokenizer file")
    mixture = [(f"local:{tmp_path / 'a.jsonl'}", 2.0), (f"local:{tmp_path / 'b.jsonl'}", 1.0)]
    return tmp_path, mixture


SETTINGS = dict(val_fraction=0.2, seed=3, max_chars_per_source=None)


def _cached(mixture, cache, write=True, **settings):
    """cached_corpus, counting its calls of load_mixture (a hit makes none)."""
    settings, calls, real = {**SETTINGS, **settings}, [], corpus.load_mixture

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(corpus, "load_mixture", counting)
        got, key = corpus_cache.cached_corpus(mixture, cache, write, **settings)
    return got, key, len(calls)


def _fields(c):
    return ([(s.name, s.weight, s.train, s.val) for s in c.splits.values()], c.val_fraction,
            c.seed, c.duplicates_removed, c.paragraphs_removed, c.attributions)


def char_tokens(c):
    enc = lambda docs: [np.asarray([ord(ch) for ch in d] + [3], np.int32) for d in docs]
    return ({n: enc(s.train) for n, s in c.splits.items()},
            {n: enc(s.val) for n, s in c.splits.items() if s.val})


def test_cached_corpus_equals_a_fresh_build_and_skips_it(sources):
    tmp, mixture = sources
    first, key, calls = _cached(mixture, tmp / "cache")
    again, key2, calls2 = _cached(mixture, tmp / "cache")
    assert (calls, calls2, key2) == (1, 0, key)
    assert _fields(again) == _fields(first) == _fields(corpus.load_mixture(mixture, **SETTINGS))
    assert any(s.val for s in again.splits.values())


def test_cached_tokens_equal_the_tokenised_corpus(sources):
    tmp, mixture = sources
    c, key, _ = _cached(mixture, tmp / "cache")
    built = []
    build = lambda: built.append(1) or char_tokens(c)
    args = (key, c, str(tmp / "tok.model"), tmp / "cache", True)
    train, val = corpus_cache.cached_tokens(build, *args)
    train2, val2 = corpus_cache.cached_tokens(build, *args)
    assert len(built) == 1
    for fresh, cached in ((train, train2), (val, val2)):
        assert list(fresh) == list(cached)
        for name in fresh:
            assert len(fresh[name]) == len(cached[name])
            for a, b in zip(fresh[name], cached[name]):
                assert a.dtype == b.dtype and np.array_equal(a, b)
    (tmp / "copy.model").write_bytes((tmp / "tok.model").read_bytes())  # same tokenizer
    corpus_cache.cached_tokens(build, key, c, str(tmp / "copy.model"), tmp / "cache", True)
    assert len(built) == 1
    (tmp / "tok.model").write_bytes(b"another tokenizer")  # tokenised again
    corpus_cache.cached_tokens(build, *args)
    assert len(built) == 2


def test_any_changed_input_or_setting_builds_again(sources):
    tmp, mixture = sources
    _, key, _ = _cached(mixture, tmp / "cache")
    assert _cached(mixture, tmp / "cache", seed=4)[2] == 1
    assert _cached(mixture[::-1], tmp / "cache")[2] == 1
    assert _cached([(mixture[0][0], 1.0), mixture[1]], tmp / "cache")[2] == 1
    with open(tmp / "b.jsonl", "a") as f:
        f.write(json.dumps({"text": "one more document"}) + "\n")
    changed, key2, calls = _cached(mixture, tmp / "cache")
    assert calls == 1 and key2 != key
    assert "one more document" in sum(([*s.train, *s.val] for s in changed.splits.values()), [])


def test_damaged_entry_is_rebuilt_and_rewritten(sources, capsys):
    tmp, mixture = sources
    first, key, _ = _cached(mixture, tmp / "cache")
    path = corpus_cache.folder(tmp / "cache") / f"{key}.json"
    path.write_text(path.read_text()[:100])
    again, _, calls = _cached(mixture, tmp / "cache")
    assert calls == 1 and "ignoring unreadable" in capsys.readouterr().out
    assert _fields(again) == _fields(first)
    assert _cached(mixture, tmp / "cache")[2] == 0  # rewritten whole
    built = []
    build = lambda: built.append(1) or char_tokens(again)
    args = (key, again, str(tmp / "tok.model"), tmp / "cache", True)
    corpus_cache.cached_tokens(build, *args)
    (npz,) = corpus_cache.folder(tmp / "cache").glob("*.npz")
    npz.write_bytes(npz.read_bytes()[:200])
    train, _ = corpus_cache.cached_tokens(build, *args)
    assert len(built) == 2 and list(train) == list(again.splits)


def test_no_write_and_off_switch(sources, monkeypatch):
    tmp, mixture = sources
    _cached(mixture, tmp / "cache", write=False)
    assert not corpus_cache.folder(tmp / "cache").exists()
    monkeypatch.setenv(corpus_cache.ENV, str(tmp / "elsewhere"))
    _, key, _ = _cached(mixture, tmp / "cache")
    assert (tmp / "elsewhere" / f"{key}.json").exists()
    monkeypatch.setenv(corpus_cache.ENV, "off")
    assert _cached(mixture, tmp / "cache")[1:] == (None, 1)
    assert not corpus_cache.folder(tmp / "cache").exists()


def test_bad_mixture_is_reported_before_any_hashing(tmp_path):
    with pytest.raises(ValueError, match="weight must be > 0"):
        _cached([(f"local:{tmp_path / 'missing.jsonl'}", 0.0)], tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _cached([(f"local:{tmp_path / 'missing.jsonl'}", 1.0)], tmp_path)

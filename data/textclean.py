"""Text cleaning for pretraining corpora: boilerplate, whitespace, dedup, holdout, caps.

All functions are pure and deterministic: the same documents give the same result on every
machine, whatever order they arrive in (holdout and caps rank documents by a hash).
"""

import hashlib
import re
import unicodedata

# Project Gutenberg markers. Newer files: "*** START OF THIS PROJECT GUTENBERG EBOOK X ***" …
# "*** END OF THIS PROJECT GUTENBERG EBOOK X ***" (the footer line "End of Project Gutenberg's
# X" comes just before it). Older files end their header with "*END*THE SMALL PRINT! ...".
_GUT_START = re.compile(r"^\*{3}\s*START OF (THIS|THE) PROJECT GUTENBERG.*$", re.I | re.M)
_GUT_SMALL_PRINT_END = re.compile(r"^.*\*END\*\s*THE SMALL PRINT.*$", re.I | re.M)
_GUT_END = re.compile(
    r"^(\*{3}\s*END OF (THIS|THE) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$",
    re.I | re.M,
)
# The 1990s World Library Shakespeare carries this block in the middle of each play:
# "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM SHAKESPEARE IS COPYRIGHT ...>>".
_ELECTRONIC_VERSION = re.compile(r"<<[^<>]*?ELECTRONIC VERSION[^<>]*?>>\s*", re.S)
# Producer credits right after the START marker ("Produced by David Starner and ...").
_CREDITS = re.compile(r"(Produced by|This etext was prepared by)\b", re.I)

_MANY_NEWLINES = re.compile(r"\n{3,}")
_PARAGRAPH_SPLIT = re.compile(r"\n\s*\n")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def strip_gutenberg(text: str) -> str:
    """Removes Project Gutenberg headers, footers and the World Library copyright blocks."""
    text = text.replace("\r\n", "\n")
    start = _GUT_START.search(text) or _GUT_SMALL_PRINT_END.search(text)
    if start:
        text = text[start.end():]
    end = _GUT_END.search(text)
    if end:
        text = text[: end.start()]
    text = _ELECTRONIC_VERSION.sub("", text)
    if start:  # credits only follow a real header; elsewhere "Produced by" may be prose
        text = text.lstrip("\n")
        if _CREDITS.match(text):
            # A credits paragraph is short; files without blank lines lose only the line.
            para_end, line_end = text.find("\n\n"), text.find("\n")
            cut = para_end if 0 <= para_end < 500 else line_end
            text = text[cut:] if cut >= 0 else ""
    return text


def normalize_whitespace(text: str) -> str:
    """NFC, no BOM, \\n line ends, no trailing spaces, at most one blank line in a row.

    Leading indentation is kept: it carries meaning in verse and in code.
    """
    text = unicodedata.normalize("NFC", text).replace("\ufeff", "")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip("\n").rstrip()


def dedup_key(text: str) -> str:
    """Hash of the text with case and all whitespace folded away (for exact dedup)."""
    folded = " ".join(text.casefold().split())
    return hashlib.sha1(folded.encode("utf-8")).hexdigest()


def _rank(text: str, seed: int) -> str:
    """A per-document sort key that depends only on the text and the seed."""
    return hashlib.sha1(f"{seed}\x00{text}".encode()).hexdigest()


def drop_duplicate_docs(docs: list[str], seen: set[str] | None = None) -> list[str]:
    """Keeps the first copy of each document (by `dedup_key`); `seen` carries keys across calls."""
    seen = set() if seen is None else seen
    kept = []
    for doc in docs:
        key = dedup_key(doc)
        if key not in seen:
            seen.add(key)
            kept.append(doc)
    return kept


def drop_repeated_paragraphs(
    docs: list[str], seen: set[str] | None = None, min_chars: int = 200
) -> tuple[list[str], int]:
    """Removes paragraphs of >= min_chars already seen (letters and digits only, lower case).

    A cheap near-duplicate filter: catches a poem printed in two collections with different
    punctuation or line breaks, while short repeated lines ("Exeunt.") stay. Documents left empty
    are dropped. Returns (documents, number of paragraphs removed).
    """
    seen = set() if seen is None else seen
    kept, removed = [], 0
    for doc in docs:
        paragraphs = []
        for paragraph in _PARAGRAPH_SPLIT.split(doc):
            folded = _NON_ALNUM.sub("", paragraph.casefold())
            if len(paragraph) >= min_chars:
                key = hashlib.sha1(folded.encode()).hexdigest()
                if key in seen:
                    removed += 1
                    continue
                seen.add(key)
            paragraphs.append(paragraph)
        text = "\n\n".join(paragraphs).strip()
        if text:
            kept.append(text)
    return kept, removed


def split_long_text(text: str, max_chars: int, chunk_chars: int) -> list[str]:
    """Returns [text] if len(text) <= max_chars, else chunks of ~chunk_chars on paragraph ends.

    A paragraph longer than chunk_chars becomes a chunk of its own.
    """
    if len(text) <= max_chars:
        return [text]
    chunks, current, size = [], [], 0
    for paragraph in _PARAGRAPH_SPLIT.split(text):
        if current and size + len(paragraph) > chunk_chars:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(paragraph)
        size += len(paragraph) + 2
    if current:
        chunks.append("\n\n".join(current))
    return [c for c in chunks if c.strip()]


def cap_chars(docs: list[str], max_chars: int, seed: int) -> list[str]:
    """Deterministic subset of at most max_chars characters.

    Documents are taken in hash order (seed-dependent, independent of input order); the first
    one that does not fit is cut at a line end so the budget is used exactly. Result is in
    hash order.
    """
    if max_chars <= 0:
        raise ValueError(f"max_chars must be > 0, got {max_chars}")
    kept, total = [], 0
    for doc in sorted(docs, key=lambda d: _rank(d, seed)):
        room = max_chars - total
        if len(doc) <= room:
            kept.append(doc)
            total += len(doc)
            continue
        cut = doc[:room]
        cut = cut[: cut.rfind("\n")] if "\n" in cut else cut
        if cut.strip():
            kept.append(cut.rstrip())
        break
    return kept


def split_holdout(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Whole-document train/validation split, by hash of each document's text.

    n_val = round(val_fraction * n), at least 1 when val_fraction > 0 and n >= 2, and never
    all documents. The documents with the smallest hash(seed, text) go to validation, so the
    split is the same whatever order documents arrive in. Both lists are in input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(docs)
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    val_ids = set(sorted(range(n), key=lambda i: _rank(docs[i], seed))[:n_val])
    train = [d for i, d in enumerate(docs) if i not in val_ids]
    val = [d for i, d in enumerate(docs) if i in val_ids]
    return train, val

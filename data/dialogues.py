"""Dialogue readers: JSONL `{"messages": [...]}` rows and the Anthropic HH text form.

HH text form: "\\n\\nHuman: ...\\n\\nAssistant: ...", turns alternating, starting with Human.
In HH-RLHF files it sits in the "chosen" (and "rejected") field of each JSONL row.

Bad-row policy (shared with data/preferences.py through `read_jsonl`): every malformed row
is reported as `path:line: what is wrong`; the reader skips it, warns once with the list, and
raises DataError when more than `max_bad_fraction` of the rows are bad (a wrong file or a
wrong format, rather than a few damaged rows). Blank lines are not rows. `.gz` files are
read through gzip.
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
from collections.abc import Callable

from data import chat

_SHOWN = 10  # bad rows quoted in a warning or error; the count is always complete


class DataError(ValueError):
    """Too many malformed rows in a data file (the message lists them as path:line)."""


def _open_text(path):
    path = str(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def check_bad_rows(path, bad: list[str], n_rows: int, max_bad_fraction: float) -> None:
    """Warn about the bad rows (each 'path:line: what'); raise DataError past the threshold."""
    if not bad:
        return
    listing = "\n  ".join(bad[:_SHOWN]) + (f"\n  ... and {len(bad) - _SHOWN} more"
                                            if len(bad) > _SHOWN else "")
    summary = f"{path}: {len(bad)} of {n_rows} rows are malformed"
    if len(bad) > max_bad_fraction * n_rows:
        raise DataError(f"{summary}, more than max_bad_fraction={max_bad_fraction}; "
                        f"wrong file or format?\n  {listing}")
    warnings.warn(f"{summary}; skipped them:\n  {listing}", stacklevel=3)


def read_jsonl(path, parse_row: Callable, max_bad_fraction: float = 0.01) -> list:
    """Items `parse_row(obj, where)` of each JSONL row of `path` (where = "path:line").

    parse_row raises ValueError for a malformed row and may return None to skip a valid row
    that holds nothing usable. Malformed rows follow the module's bad-row policy.
    """
    items, bad, n_rows = [], [], 0
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            n_rows += 1
            where = f"{path}:{lineno}"
            try:
                item = parse_row(json.loads(line), where)
            except json.JSONDecodeError as e:
                bad.append(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            except ValueError as e:
                msg = str(e)
                bad.append(msg if msg.startswith(where) else f"{where}: {msg}")
                continue
            if item is not None:
                items.append(item)
    check_bad_rows(path, bad, n_rows, max_bad_fraction)
    return items


_HH_MARK = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_hh(text, where: str, final: str = "assistant") -> list[dict]:
    """Messages of an HH-form dialogue; ValueError (naming `where`) if it is not one.

    final: "assistant" for a dialogue, "user" for the shared prompt of a preference pair.
    A missing leading "\\n\\n" before the first "Human:" is tolerated.
    """
    if not isinstance(text, str):
        raise ValueError(f"{where}: HH dialogue must be a string, got {type(text).__name__}")
    if text.startswith("Human:"):
        text = "\n\n" + text
    parts = _HH_MARK.split(text)
    if parts[0].strip():
        raise ValueError(f"{where}: HH dialogue must start with '\\n\\nHuman:', "
                         f"starts with {parts[0][:40]!r}")
    if len(parts) < 3:
        raise ValueError(f"{where}: no '\\n\\nHuman:' / '\\n\\nAssistant:' turns found")
    messages = [{"role": _HH_ROLE[speaker], "content": content.strip()}
                for speaker, content in zip(parts[1::2], parts[2::2], strict=True)]
    chat.validate_messages(messages, where, final=final)
    return messages


def parse_dialogue_row(obj, where: str, hh_field: str = "chosen") -> list[dict]:
    """Messages of one dialogue row: {"messages": [...]} or {hh_field: "<HH text>"}."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: row must be a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        chat.validate_messages(obj["messages"], where, final="assistant")
        return obj["messages"]
    if hh_field in obj:
        return parse_hh(obj[hh_field], where)
    raise ValueError(f"{where}: row has neither 'messages' nor {hh_field!r} "
                     f"(keys: {sorted(obj)[:8]})")


def read_dialogues(path, max_bad_fraction: float = 0.01, hh_field: str = "chosen"):
    """All dialogues (messages lists) of a JSONL file whose rows are either
    {"messages": [...]} or HH rows with the dialogue text in `hh_field`."""
    return read_jsonl(path, lambda obj, where: parse_dialogue_row(obj, where, hh_field),
                      max_bad_fraction)


def conversations_from_turns(turns: list[str]) -> list[dict] | None:
    """Messages from alternating speaker turns: the first speaker is the user, the second the
    assistant. A trailing user turn (no reply to learn from) is dropped. Returns None — skip —
    when fewer than 2 turns remain. Merge consecutive turns of one speaker before calling."""
    turns = [t.strip() for t in turns]
    if len(turns) % 2:
        turns = turns[:-1]
    if len(turns) < 2:
        return None
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
            for i, t in enumerate(turns)]

"""The chat format: messages <-> token ids, the one place that knows the template.

A conversation is `messages = [{"role": "system"|"user"|"assistant", "content": str}, ...]`.
Rendered as

    <bos> <|role|> encode(content) <|end|> <|role|> encode(content) <|end|> ...

Each message is encoded on its own, so a prompt's ids are always a prefix of the ids of the
same conversation with the reply appended (the sampler, the reward model and PPO rely on it).
The loss mask is 1 on assistant content tokens and their <|end|>, 0 elsewhere: the model
learns to answer and to stop, never to imitate the user.

Message rules (validate_messages):
  - a non-empty list of dicts with the keys "role" and "content" (other keys are ignored);
  - content is a str (a literal "<|end|>" in it is harmless: the tokenizer encodes special
    strings in text as plain pieces, so only this module inserts control ids);
  - an optional leading system message, then user and assistant strictly alternating,
    starting with user;
  - `final` says how it must end: "assistant" for training conversations, "user" for a
    prompt to generate from, "any" to skip that check.

Only the Tokenizer methods of the shared interface are used: encode, decode, special_id,
bos_id (eos_id to recognise a document end in generated ids).

A Hugging Face tokenizer with a chat template (data/hf_tokenizer.py) is rendered with the
model's own template instead (data/chat_template.py): same functions, same loss-mask meaning,
its stop ids (generation_config.json) closing a reply.
"""

from __future__ import annotations

from typing import NamedTuple

from data.tokenizer import SPECIAL_TOKENS

ROLES = ("system", "user", "assistant")
END = "<|end|>"
ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}
# the template and the tokenizer's reserved symbols must name the same four tokens
assert {*ROLE_TOKENS.values(), END} == set(SPECIAL_TOKENS), SPECIAL_TOKENS


def validate_messages(messages, where: str, final: str = "assistant") -> None:
    """Raise ValueError naming `where` (e.g. "data.jsonl:12") unless messages follow the rules
    in the module docstring. final: "assistant" | "user" | "any"."""
    if final not in ("assistant", "user", "any"):
        raise ValueError(f"final must be 'assistant', 'user' or 'any', not {final!r}")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: messages must be a non-empty list, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(
                f"{where}: message {i} must be a dict with keys 'role' and 'content', got {m!r:.80}"
            )
        if m["role"] not in ROLES:
            raise ValueError(
                f"{where}: message {i} has role {m['role']!r}; expected one of {ROLES}"
            )
        if not isinstance(m["content"], str):
            raise ValueError(f"{where}: message {i} content must be a string, got "
                             f"{type(m['content']).__name__}")
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if not turns:
        raise ValueError(f"{where}: a system message alone is not a conversation")
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            idx = i + len(messages) - len(turns)
            raise ValueError(
                f"{where}: message {idx} has role {m['role']!r} where {want!r} was expected "
                "(optional system first, then user and assistant alternating)"
            )
    if final != "any" and turns[-1]["role"] != final:
        raise ValueError(f"{where}: conversation must end with an {final!r} message, "
                         f"ends with {turns[-1]['role']!r}")


def _render(tok, messages) -> tuple[list[int], list[int]]:
    end_id = tok.special_id(END)
    ids, mask = [tok.bos_id], [0]
    for m in messages:
        content = tok.encode(m["content"])
        learn = int(m["role"] == "assistant")
        ids += [tok.special_id(ROLE_TOKENS[m["role"]])] + content + [end_id]
        mask += [0] + [learn] * (len(content) + 1)
    return ids, mask


def _model_template(tok):
    """The model's own template (a Hugging Face tokenizer with a chat_template), or None."""
    return getattr(tok, "chat_renderer", None)


def render_conversation(tok, messages) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a conversation ending with an assistant message."""
    validate_messages(messages, "render_conversation", final="assistant")
    template = _model_template(tok)
    return template.conversation(messages) if template else _render(tok, messages)


def render_prompt(tok, messages) -> list[int]:
    """Ids of a conversation ending with a user message, then the <|assistant|> header (the
    model template's generation prompt)."""
    validate_messages(messages, "render_prompt", final="user")
    template = _model_template(tok)
    if template:
        return template.prompt(messages)
    ids, _ = _render(tok, messages)
    return ids + [tok.special_id(ROLE_TOKENS["assistant"])]


def stop_ids(tok) -> tuple[int, ...]:
    """Ids that end a reply: <|end|>, or the stop ids of a model with its own template (the
    sampler, PPO's rollouts and EOS handling and best-of-n stop on any of them)."""
    return tuple(tok.stop_ids) if _model_template(tok) is not None else (tok.special_id(END),)


class Reply(NamedTuple):
    text: str
    terminated: bool  # True when the reply closed its turn with <|end|>


def parse_reply(tok, ids) -> Reply:
    """Decode generated ids up to the first <|end|> (or eos, which closes a document, not a
    turn). `terminated` is False when no <|end|> came: the reply hit the length cap or eos."""
    ids = [int(i) for i in ids]
    if _model_template(tok) is not None:  # the model's stop ids close its turn
        stops = set(tok.stop_ids)
        for n, i in enumerate(ids):
            if i in stops:
                return Reply(tok.decode(ids[:n]), True)
        return Reply(tok.decode(ids), False)
    end_id, eos_id = tok.special_id(END), tok.eos_id
    for n, i in enumerate(ids):
        if i == end_id:
            return Reply(tok.decode(ids[:n]), True)
        if i == eos_id:
            return Reply(tok.decode(ids[:n]), False)
    return Reply(tok.decode(ids), False)


def truncate_history(tok, messages, max_tokens: int) -> list[dict]:
    """The most recent turns of a prompt conversation (ending with a user message) whose
    render_prompt fits in max_tokens. Whole user/assistant exchanges are dropped from the
    front; a leading system message is always kept. Raises ValueError when even the system
    message plus the last user message do not fit.

    Cost counted exactly as render_prompt lays it out: 1 (bos) + 1 (assistant header)
    + sum over messages of (2 + len(encode(content))).
    """
    validate_messages(messages, "truncate_history", final="user")
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    template = _model_template(tok)
    if template:  # a model template lays tokens out its own way: measure each candidate
        for start in range(0, len(turns), 2):
            if len(template.prompt(system + turns[start:])) <= max_tokens:
                return system + turns[start:]
        raise ValueError(f"the last user message does not fit in {max_tokens} prompt tokens "
                         "with the model's chat template")
    cost = [2 + len(tok.encode(m["content"])) for m in turns]
    fixed = 2 + sum(2 + len(tok.encode(m["content"])) for m in system)
    # turns alternate user/assistant and end with user, so every even start index is a user
    for start in range(0, len(turns), 2):
        if fixed + sum(cost[start:]) <= max_tokens:
            return system + turns[start:]
    raise ValueError(
        f"the last user message needs {fixed + cost[-1]} prompt tokens (with the system "
        f"message and headers) but only {max_tokens} are available"
    )

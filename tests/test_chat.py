"""Chat format: rendering, loss mask, prompt form, reply parsing, validation, truncation."""

import pytest

from data import chat, tasks
from data.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer

CONV = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 3 plus 4?"},
    {"role": "assistant", "content": "The sum of 3 and 4 is 7."},
    {"role": "user", "content": 'Spell "cat" backwards.'},
    {"role": "assistant", "content": 'The word "cat" spelled backwards is "tac".'},
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [m["content"] for t in tasks.make_tasks(tasks.FAMILIES, 80, seed=1)
             for m in tasks.task_messages(t)]
    texts += [m["content"] for m in CONV] * 5
    path = train_tokenizer(texts, 400, tmp_path_factory.mktemp("tok") / "tiny")
    return Tokenizer(path)


def _expected_mask(tok, ids):
    """Mask recomputed from the ids alone: 1 from after each <|assistant|> header through
    its closing <|end|>, 0 everywhere else."""
    asst, end = tok.special_id("<|assistant|>"), tok.special_id("<|end|>")
    mask, inside = [], False
    for i in ids:
        if i == asst:
            mask.append(0)
            inside = True
            continue
        mask.append(int(inside))
        if i == end:
            inside = False
    return mask


def test_special_ids_follow_the_shared_layout(tok):
    assert [tok.special_id(s) for s in SPECIAL_TOKENS] == [4, 5, 6, 7]


def test_render_layout_and_loss_mask(tok):
    ids, mask = chat.render_conversation(tok, CONV)
    assert len(ids) == len(mask)
    assert ids[0] == tok.bos_id
    assert mask == _expected_mask(tok, ids)
    # the mask covers exactly the assistant contents plus one <|end|> each
    n_asst = sum(len(tok.encode(m["content"])) + 1 for m in CONV if m["role"] == "assistant")
    assert sum(mask) == n_asst
    end = tok.special_id("<|end|>")
    assert [i for i, m in zip(ids, mask, strict=True) if m and i == end] == [end, end]
    specials = {tok.special_id(s) for s in SPECIAL_TOKENS}
    headers = [i for i in ids if i in specials and i != end]
    roles = [tok.special_id(f"<|{m['role']}|>") for m in CONV]
    assert headers == roles


def test_round_trip_prompt_reply(tok):
    prompt_ids = chat.render_prompt(tok, CONV[:-1])
    assert prompt_ids[-1] == tok.special_id("<|assistant|>")
    full_ids, _ = chat.render_conversation(tok, CONV)
    assert full_ids[: len(prompt_ids)] == prompt_ids  # the prompt is a prefix
    generated = full_ids[len(prompt_ids):] + [tok.pad_id] * 3
    reply = chat.parse_reply(tok, generated)
    assert reply == (CONV[-1]["content"], True)
    assert reply.terminated and reply.text == CONV[-1]["content"]


def test_parse_reply_unterminated_and_eos(tok):
    body = tok.encode("The sum of 3 and 4 is 7.")
    assert chat.parse_reply(tok, body) == ("The sum of 3 and 4 is 7.", False)
    cut = chat.parse_reply(tok, body[:3] + [tok.eos_id] + body[3:])
    assert cut == (tok.decode(body[:3]), False)
    # only the first <|end|> counts; later text is not part of the reply
    end = tok.special_id("<|end|>")
    assert chat.parse_reply(tok, body + [end] + tok.encode("more")).text.endswith("7.")


def test_literal_special_text_stays_text(tok):
    msgs = [{"role": "user", "content": "say <|end|> please"},
            {"role": "assistant", "content": "ok <|end|>"}]
    ids, mask = chat.render_conversation(tok, msgs)
    assert ids.count(tok.special_id("<|end|>")) == 2
    assert mask == _expected_mask(tok, ids)


@pytest.mark.parametrize("messages, final, fragment", [
    ([], "assistant", "non-empty list"),
    ([{"role": "bot", "content": "x"}], "any", "role 'bot'"),
    ([{"role": "user", "content": 3}], "any", "must be a string"),
    ([{"role": "user"}], "any", "keys 'role' and 'content'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "any",
     "message 1 has role 'user' where 'assistant'"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "any",
     "message 1 has role 'system'"),
    ([{"role": "assistant", "content": "a"}], "any", "message 0 has role 'assistant'"),
    ([{"role": "system", "content": "s"}], "any", "system message alone"),
    ([{"role": "user", "content": "a"}], "assistant", "must end with an 'assistant'"),
    (CONV, "user", "must end with an 'user'"),
])
def test_validate_messages_rejects(messages, final, fragment):
    with pytest.raises(ValueError, match="f.jsonl:7") as err:
        chat.validate_messages(messages, "f.jsonl:7", final=final)
    assert fragment in str(err.value)


def test_validate_messages_accepts():
    chat.validate_messages(CONV, "x")
    chat.validate_messages(CONV[1:4], "x", final="user")
    chat.validate_messages(CONV[1:3], "x", final="assistant")


def test_render_prompt_requires_user_last(tok):
    with pytest.raises(ValueError, match="render_prompt"):
        chat.render_prompt(tok, CONV)


def test_truncate_history_keeps_most_recent_within_budget(tok):
    history = CONV + [{"role": "user", "content": "And 5 plus 6?"}]
    full = len(chat.render_prompt(tok, history))
    assert chat.truncate_history(tok, history, full) == history
    kept = chat.truncate_history(tok, history, full - 1)
    assert kept == [history[0]] + history[3:]  # oldest exchange dropped, system kept
    assert len(chat.render_prompt(tok, kept)) <= full - 1
    minimal = [history[0], history[-1]]
    need = len(chat.render_prompt(tok, minimal))
    assert chat.truncate_history(tok, history, need) == minimal
    with pytest.raises(ValueError, match="only"):
        chat.truncate_history(tok, history, need - 1)

"""The Hugging Face tokenizer behind jaxchat's Tokenizer interface, against transformers'
AutoTokenizer on a byte-level BPE tokenizer.json trained here."""

import json

import pytest
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data import tasks
from data.hf_tokenizer import HFTokenizer
from data.tokenizer import check_vocab, load_tokenizer

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>"]
TEXTS = ["Hello, how are you today?", "What is 12 + 7?  The sum is 19.", "naïve café — ünïcödé 🙂",
         "  leading spaces and\ttabs\nnew lines", "", "<|eot_id|> typed by a user"]


def build_tokenizer(folder):
    """A byte-level BPE tokenizer.json (vocab 400) with Llama-3-like special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [t.prompt + " " + t.answer for t in tasks.make_tasks(tasks.FAMILIES, 300, seed=0,
                                                                  split="train")] + TEXTS
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(folder / "tokenizer.json"))
    eos = {"__type": "AddedToken", "content": "<|end_of_text|>", "lstrip": False,
           "rstrip": False, "normalized": False, "single_word": False, "special": True}
    json.dump({"bos_token": "<|begin_of_text|>", "eos_token": eos,  # both forms of a token
               "tokenizer_class": "PreTrainedTokenizerFast"},
              open(folder / "tokenizer_config.json", "w"))
    json.dump({"eos_token_id": [tok.token_to_id("<|eot_id|>"),
                                tok.token_to_id("<|end_of_text|>")]},
              open(folder / "generation_config.json", "w"))
    return folder


def build_chat_tokenizer(folder):
    """build_tokenizer plus ChatML tokens, a template marking assistant text, <|im_end|> stop."""
    build_tokenizer(folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.save(str(folder / "tokenizer.json"))
    config = json.load(open(folder / "tokenizer_config.json"))
    json.dump({**config, "chat_template": CHATML}, open(folder / "tokenizer_config.json", "w"))
    json.dump({"eos_token_id": tok.token_to_id("<|im_end|>")},
              open(folder / "generation_config.json", "w"))
    return folder


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("hf_tok"))


def test_encode_decode_and_special_ids_equal_transformers(hf_folder):
    ours = load_tokenizer(str(hf_folder))
    theirs = transformers.AutoTokenizer.from_pretrained(hf_folder)
    assert isinstance(ours, HFTokenizer) and ours.vocab_size == len(theirs)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs(text, add_special_tokens=False)["input_ids"], text
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text
    assert ours.encode_batch(TEXTS) == [ours.encode(t) for t in TEXTS]
    assert ours.bos_id == theirs.bos_token_id
    assert ours.stop_ids == (ours.special_id("<|eot_id|>"), ours.special_id("<|end_of_text|>"))
    assert ours.eos_id == theirs.eos_token_id  # tokenizer_config's eos: the document end
    assert ours.pad_id not in (*ours.stop_ids, ours.eos_id)  # no pad token: never a stop
    assert ours.decode([ours.bos_id] + ours.encode("Hi there") + [ours.eos_id]) == "Hi there"


def test_vocabulary_fit_and_bad_special_tokens(hf_folder, tmp_path):
    ours = HFTokenizer(str(hf_folder))
    check_vocab(ours, ours.vocab_size + 64)  # a padded checkpoint embedding is fine
    with pytest.raises(ValueError, match="more than the model's vocabulary"):
        check_vocab(ours, ours.vocab_size - 1)
    (tmp_path / "tokenizer.json").write_text((hf_folder / "tokenizer.json").read_text())
    json.dump({"bos_token": "<s>"}, open(tmp_path / "tokenizer_config.json", "w"))
    with pytest.raises(ValueError, match="bos_token='<s>' is not in tokenizer.json"):
        HFTokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        HFTokenizer(str(tmp_path / "nowhere"))


CHATML = ("{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
          "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|im_end|>' }}"
          "{% endgeneration %}{{ '\\n' }}{% else %}{{ m['content'] + '<|im_end|>\\n' }}"
          "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")
CONVERSATIONS = [
    [{"role": "user", "content": "What is 12 + 7?"},
     {"role": "assistant", "content": "The sum of 12 and 7 is 19."}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Hello there!"}, {"role": "assistant", "content": "Hi."},
     {"role": "user", "content": "Spell cat backwards."},
     {"role": "assistant", "content": "tac — naïve ünïcödé 🙂"}],
]


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    return build_chat_tokenizer(tmp_path_factory.mktemp("hf_chat"))


@pytest.mark.parametrize("marked", [True, False])
def test_chat_template_ids_and_assistant_mask_equal_transformers(chat_folder, tmp_path, marked):
    """With {% generation %} the mask is transformers' assistant mask; without it (most hub
    templates), the prefix rule gives the same tokens plus the newline after <|im_end|>."""
    from data import chat

    theirs = transformers.AutoTokenizer.from_pretrained(chat_folder)
    folder = chat_folder
    if not marked:
        folder = tmp_path / "plain"
        folder.mkdir()
        for name in ("tokenizer.json", "generation_config.json"):
            (folder / name).write_text((chat_folder / name).read_text())
        config = json.load(open(chat_folder / "tokenizer_config.json"))
        config["chat_template"] = CHATML.replace("{% generation %}", "").replace(
            "{% endgeneration %}", "")
        json.dump(config, open(folder / "tokenizer_config.json", "w"))
    ours = load_tokenizer(str(folder))
    newline = ours.encode("\n")
    for messages in CONVERSATIONS:
        want = theirs.apply_chat_template(messages, tokenize=True, return_dict=True,
                                          return_assistant_tokens_mask=True)
        ids, mask = chat.render_conversation(ours, messages)
        assert ids == list(want["input_ids"])
        assert ids.count(ours.bos_id) == 1 and ids[0] == ours.bos_id
        expected = list(want["assistant_masks"])
        if not marked:  # the template's "\n" after each reply's <|im_end|> is learned too
            for i in range(1, len(ids)):
                if ids[i - 1] == ours.special_id("<|im_end|>") and expected[i - 1] and \
                        ids[i:i + len(newline)] == newline:
                    expected[i:i + len(newline)] = [1] * len(newline)
        assert mask == expected
        prompt = messages[:-1]
        assert chat.render_prompt(ours, prompt) == list(theirs.apply_chat_template(
            prompt, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
    reply = ours.encode("Sure.") + [ours.special_id("<|im_end|>")] + ours.encode(" extra")
    assert chat.parse_reply(ours, reply) == chat.Reply("Sure.", True)
    assert chat.parse_reply(ours, ours.encode("no stop")) == chat.Reply("no stop", False)

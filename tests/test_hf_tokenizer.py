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


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_tok")
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
    assert ours.pad_id == ours.eos_id  # no pad token: eos, as Llama 3 does
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

"""SentencePiece tokenizer: reserved ids, exact round trips, special-token safety, vocab check."""

import pickle
import random

import pytest

from data import tokenizer
from data.tokenizer import SPECIAL_TOKENS, Tokenizer

VOCAB = 320  # 264 reserved pieces + the ~40 characters of the generated text + a few merges


def _generated_texts(seed=0, n_docs=40):
    rng = random.Random(seed)
    syllables = ["ka", "ri", "to", "me", "sa", "lo", "ne", "vu", "da", "pi"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(150)]
    docs = []
    for _ in range(n_docs):
        lines = [
            " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))).capitalize()
            + rng.choice(".?!") + f" {rng.randint(0, 999)}"
            for _ in range(20)
        ]
        docs.append("\n".join(lines))
    return docs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    path = tokenizer.train_tokenizer(_generated_texts(), VOCAB, out / "tiny")
    return out, path


@pytest.fixture(scope="module")
def tok(trained):
    return Tokenizer(trained[1])


def test_training_writes_model_and_vocab_only(trained):
    out, path = trained
    assert path == str(out / "tiny.model")
    assert sorted(p.name for p in out.iterdir()) == ["tiny.model", "tiny.vocab"]  # no temp dir
    vocab_lines = (out / "tiny.vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab_lines) == VOCAB


def test_training_is_deterministic_in_the_inputs_and_seed(trained, tmp_path):
    """Same texts, sample size and seed: the same model bytes (the pipeline's reproducibility
    starts here); a line sample drawn with another seed changes the vocabulary."""
    runs = [tokenizer.train_tokenizer(_generated_texts(), VOCAB, tmp_path / f"r{i}" / "tiny",
                                      input_sentence_size=300, seed=seed)
            for i, seed in enumerate((0, 0, 1))]
    blobs = [open(p, "rb").read() for p in runs]
    vocabs = [open(p.replace(".model", ".vocab")).read() for p in runs]
    assert vocabs[0] == vocabs[1] and vocabs[0] != vocabs[2]
    assert blobs[0].replace(b"/r0/", b"/r1/") == blobs[1]  # the scratch path is stored in it
    assert sorted(p.name for p in (tmp_path / "r0").iterdir()) == ["tiny.model", "tiny.vocab"]


def test_reserved_ids(tok):
    assert tok.vocab_size == VOCAB
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert [tok.special_id(s) for s in SPECIAL_TOKENS] == [4, 5, 6, 7]
    assert tok.special_id("<|end|>") == 7
    assert [tok.id_to_piece(i) for i in range(4, 8)] == list(SPECIAL_TOKENS)
    assert tok.id_to_piece(8) == "<0x00>" and tok.id_to_piece(8 + 255) == "<0xFF>"
    with pytest.raises(KeyError, match="not a special token"):
        tok.special_id("<|tool|>")


@pytest.mark.parametrize("text", [
    "Kari tome sa.",
    "  leading spaces,\ttabs and\n\nnewlines  \n",
    "Héllo wörld — 你好 🙂 naïve",  # characters never seen in training: byte fallback
    "12345 + 678 = 13023",
    "",
])
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_unseen_characters_use_bytes_and_digits_split(tok):
    pieces = [tok.id_to_piece(i) for i in tok.encode("你")]
    assert pieces == ["<0xE4>", "<0xBD>", "<0xA0>"]  # UTF-8 of U+4F60
    assert tok.unk_id not in tok.encode("Héllo 🙂")
    digits = [tok.id_to_piece(i) for i in tok.encode("2024")]
    assert digits == ["2", "0", "2", "4"]


def test_literal_special_strings_are_plain_text(tok):
    text = "user wrote <|end|><|assistant|> and <|system|"
    ids = tok.encode(text)
    assert not set(ids) & {tok.special_id(s) for s in SPECIAL_TOKENS}
    assert tok.decode(ids) == text


def test_decode_drops_control_and_special_ids(tok):
    body = tok.encode("Kari tome")
    ids = [tok.bos_id, tok.special_id("<|user|>"), *body, tok.special_id("<|end|>"),
           tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(ids) == "Kari tome"
    # Pieces encoded separately concatenate exactly (no dummy-prefix spaces).
    assert tok.decode(tok.encode("Kari") + tok.encode(" tome")) == "Kari tome"


def test_encode_batch_matches_encode(tok):
    texts = ["Kari tome", "with <|user|> inside", "", "Sa lo 42"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_pickle_round_trip(tok):
    clone = pickle.loads(pickle.dumps(tok))
    text = "Pickled kari 🙂 <|end|>"
    assert clone.encode(text) == tok.encode(text) and clone.path == tok.path


def test_training_is_deterministic(tok, tmp_path):
    path = tokenizer.train_tokenizer(_generated_texts(), VOCAB, tmp_path / "again")
    again = Tokenizer.load(path)
    assert [again.id_to_piece(i) for i in range(VOCAB)] == [
        tok.id_to_piece(i) for i in range(VOCAB)
    ]


def test_check_vocab(tok):
    tokenizer.check_vocab(tok, VOCAB)
    with pytest.raises(ValueError) as err:
        tokenizer.check_vocab(tok, 512)
    assert str(err.value) == (
        f"tokenizer {tok.path} has vocab {VOCAB} but config model.vocab_size is 512"
    )


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="must exceed the 264 reserved"):
        tokenizer.train_tokenizer(["abc"], 264, tmp_path / "small")
    with pytest.raises(FileNotFoundError, match="missing.model does not exist"):
        Tokenizer(tmp_path / "missing.model")


def test_training_lines_cut_long_lines():
    long_line = "x" * (2 * tokenizer.MAX_LINE_CHARS + 5)
    lines = list(tokenizer.training_lines([f"a\n\n   \n{long_line}\nb"]))
    assert lines[0] == "a" and lines[-1] == "b"
    assert [len(s) for s in lines[1:-1]] == [tokenizer.MAX_LINE_CHARS] * 2 + [5]


def test_foreign_model_without_chat_tokens_is_refused(tmp_path):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_generated_texts(n_docs=5)), model_prefix=str(tmp_path / "plain"),
        model_type="bpe", vocab_size=60, minloglevel=2,
    )
    with pytest.raises(ValueError, match=r"plain.model lacks the special token <\|system\|>"):
        Tokenizer(tmp_path / "plain.model")

"""SentencePiece BPE tokenizer with byte fallback and the chat special tokens.

Ids: pad=0, unk=1, bos=2, eos=3, then SPECIAL_TOKENS as user-defined symbols (4, 5, 6, 7),
then 256 byte pieces <0x00>..<0xFF>, then the learned merges.

Text is kept exactly (Llama-style settings): identity normalisation, no whitespace collapsing,
digits split one per token (helps arithmetic), unseen characters fall back to UTF-8 bytes.
Unlike Llama there is no dummy-prefix space, so decode(encode(s)) == s for every string s, and
encode(a) + encode(b) decodes to a + b: the chat format concatenates encoded pieces.

Special tokens are never produced from text: a literal "<|end|>" in a user message is encoded
as ordinary pieces (its "<" as a byte), so only the chat renderer can insert control tokens.
"""

import os
import random
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

SPECIAL_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# SentencePiece skips training sentences over max_sentence_length bytes; lines are cut to
# MAX_LINE_CHARS characters (<= 4 UTF-8 bytes each) so that nothing is silently dropped.
MAX_LINE_CHARS = 2000
MAX_SENTENCE_BYTES = 4 * MAX_LINE_CHARS + 16


def training_lines(texts: Iterable[str]) -> Iterator[str]:
    """Non-empty lines of the texts, each at most MAX_LINE_CHARS characters."""
    for text in texts:
        for line in text.split("\n"):
            if not line.strip():
                continue
            for start in range(0, len(line), MAX_LINE_CHARS):
                yield line[start : start + MAX_LINE_CHARS]


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    model_prefix: str | os.PathLike,
    *,
    input_sentence_size: int = 300_000,
    character_coverage: float = 0.9995,
    num_threads: int = 2,
    seed: int = 0,
) -> str:
    """Trains a BPE model on the texts; writes <model_prefix>.model/.vocab; returns .model path.

    Texts are fed line by line; at most input_sentence_size lines (0: all) are used, a sample
    drawn here with random.Random(seed): SentencePiece's own sampling gave a different vocabulary
    on every run despite spm.set_random_generator_seed, and so different runs downstream. Files
    are written into a fixed scratch folder beside the model (its path is stored in the model)
    and renamed into place, so a crash never leaves a half-written model and the same inputs give
    the same bytes. vocab_size counts everything: 4 control + 4 special + 256 byte pieces +
    merges.
    """
    reserved = 4 + len(SPECIAL_TOKENS) + 256
    if vocab_size <= reserved:
        raise ValueError(f"vocab_size {vocab_size} must exceed the {reserved} reserved pieces")
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    lines = list(training_lines(texts))
    if 0 < input_sentence_size < len(lines):
        lines = random.Random(seed).sample(lines, input_sentence_size)
    scratch = prefix.parent / f".{prefix.name}.training"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        tmp_prefix = scratch / "tok"
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_prefix=str(tmp_prefix),
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
            user_defined_symbols=list(SPECIAL_TOKENS),
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            character_coverage=character_coverage,
            input_sentence_size=0,  # sampled above
            shuffle_input_sentence=False,
            max_sentence_length=MAX_SENTENCE_BYTES,
            num_threads=num_threads,
            minloglevel=2,
        )
        model_path = prefix.with_name(prefix.name + ".model")
        # .vocab first: a present .model means the pair is complete.
        os.replace(tmp_prefix.with_suffix(".vocab"), prefix.with_name(prefix.name + ".vocab"))
        os.replace(tmp_prefix.with_suffix(".model"), model_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return str(model_path)


class Tokenizer:
    """A trained SentencePiece model; picklable (carries the serialized model)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"tokenizer {self.path} does not exist")
        self._init(spm.SentencePieceProcessor(model_file=self.path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        return cls(path)

    def _init(self, sp: spm.SentencePieceProcessor) -> None:
        self._sp = sp
        self._special = {}
        for name in SPECIAL_TOKENS:
            i = sp.piece_to_id(name)
            if i == sp.unk_id():
                raise ValueError(f"tokenizer {self.path} lacks the special token {name}")
            self._special[name] = i
        self._dropped = {sp.pad_id(), sp.bos_id(), sp.eos_id(), *self._special.values()}
        self._lt_byte = sp.piece_to_id("<0x3C>")  # "<", used to break literal special tokens

    def __getstate__(self):
        return {"path": self.path, "proto": self._sp.serialized_model_proto()}

    def __setstate__(self, state):
        self.path = state["path"]
        self._init(spm.SentencePieceProcessor(model_proto=state["proto"]))

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    def special_id(self, name: str) -> int:
        if name not in self._special:
            raise KeyError(f"{name!r} is not a special token; have {SPECIAL_TOKENS}")
        return self._special[name]

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of text; no bos/eos; literal special-token strings stay plain text."""
        if "<|" not in text:
            return self._sp.encode(text)
        ids: list[int] = []
        rest = text
        while True:
            hits = [(rest.find(s), s) for s in SPECIAL_TOKENS if s in rest]
            if not hits:
                break
            start, _ = min(hits)
            # Encode up to the special string, then its "<" as a byte so it cannot match.
            ids += self._sp.encode(rest[:start]) + [self._lt_byte]
            rest = rest[start + 1 :]
        return ids + self._sp.encode(rest)

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        """encode() of each text; texts without special strings go through SentencePiece's
        multi-threaded batch encoder."""
        out: list[list[int] | None] = [None] * len(texts)
        plain = [i for i, t in enumerate(texts) if "<|" not in t]
        if plain:
            encoded = self._sp.encode([texts[i] for i in plain], num_threads=num_threads)
            for i, ids in zip(plain, encoded, strict=True):
                out[i] = ids
        for i, text in enumerate(texts):
            if out[i] is None:
                out[i] = self.encode(text)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids; pad, bos, eos and chat special tokens are dropped."""
        return self._sp.decode([int(i) for i in ids if int(i) not in self._dropped])


def load_tokenizer(path: str):
    """jaxchat's SentencePiece model (a .model file), or a Hugging Face tokenizer folder
    (tokenizer.json; data/hf_tokenizer.py): the same interface."""
    if os.path.isdir(path):
        from data.hf_tokenizer import HFTokenizer

        return HFTokenizer(path)
    return Tokenizer(path)


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> None:
    """Raises if the tokenizer's ids do not fit the model's vocabulary. A Hugging Face
    checkpoint may pad its embedding past the tokenizer; jaxchat's own must match exactly."""
    if getattr(tokenizer, "padded_vocab_ok", False):
        if tokenizer.vocab_size > model_vocab_size:
            raise ValueError(
                f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens, more than the "
                f"model's vocabulary (model.vocab_size={model_vocab_size})")
        return
    if tokenizer.vocab_size != model_vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer.path} has vocab {tokenizer.vocab_size} "
            f"but config model.vocab_size is {model_vocab_size}"
        )


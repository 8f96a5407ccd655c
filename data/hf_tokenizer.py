"""A Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json) behind the same
interface as data/tokenizer.py's SentencePiece Tokenizer: encode, encode_batch, decode,
vocab_size, pad_id, bos_id, eos_id, unk_id, special_id, id_to_piece.

The `tokenizers` library does the work (what transformers' fast tokenizers run). Special tokens
come from tokenizer_config.json (strings or {"content": ...} objects); the end-of-sequence id
from generation_config.json when it names one (instruct models stop on their end-of-turn
token there), else tokenizer_config's eos_token. Without a pad token (Llama 3), pad is unk or
the first id that is not a stop id: padding is masked, but must never read as a stop.
encode never adds bos/eos: chat rendering places them.
"""

import functools
import json
import os


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _read_text(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


def _content(token) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


class HFTokenizer:
    padded_vocab_ok = True  # checkpoints pad the embedding past the tokenizer (Qwen2)

    def __init__(self, folder: str):
        from tokenizers import Tokenizer as _Tokenizer

        self.path = str(folder)
        path = os.path.join(self.path, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{self.path}: no tokenizer.json (a Hugging Face "
                                    "tokenizer folder holds tokenizer.json and "
                                    "tokenizer_config.json)")
        self._tok = _Tokenizer.from_file(path)
        config = _read_json(os.path.join(self.path, "tokenizer_config.json"))
        generation = _read_json(os.path.join(self.path, "generation_config.json"))
        self._ids = {name: self._token_id(_content(config.get(f"{name}_token")), name)
                     for name in ("bos", "eos", "pad", "unk")}
        eos = generation.get("eos_token_id", self._ids["eos"])
        self.stop_ids = () if eos is None else tuple(eos if isinstance(eos, list) else [eos])
        if self._ids["eos"] is None and self.stop_ids:
            self._ids["eos"] = self.stop_ids[0]
        if self._ids["pad"] is None:  # Llama 3 has none; padding is masked, but it must not
            stops = {*self.stop_ids, self._ids["eos"]}  # read as "the reply ended"
            self._ids["pad"] = next(i for i in (self._ids["unk"], *range(self.vocab_size))
                                    if i is not None and i not in stops)
        self.chat_template = config.get("chat_template") or _read_text(
            os.path.join(self.path, "chat_template.jinja"))

    @functools.cached_property
    def chat_renderer(self):
        """The compiled chat template (data/chat_template.py), built once; None without one."""
        if self.chat_template is None:
            return None
        from data.chat_template import ChatTemplate

        return ChatTemplate(self)

    def __getstate__(self):  # the compiled template is rebuilt on use, not pickled
        return {k: v for k, v in self.__dict__.items() if k != "chat_renderer"}

    def _token_id(self, token: str | None, name: str) -> int | None:
        if token is None:
            return None
        i = self._tok.token_to_id(token)
        if i is None:
            raise ValueError(f"{self.path}/tokenizer_config.json: {name}_token={token!r} is not "
                             "in tokenizer.json's vocabulary")
        return i

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int | None:
        return self._ids["pad"]

    @property
    def bos_id(self) -> int | None:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int | None:
        return self._ids["eos"]

    @property
    def unk_id(self) -> int | None:
        return self._ids["unk"]

    def special_id(self, name: str) -> int:
        i = self._tok.token_to_id(name)
        if i is None:
            raise KeyError(f"{name!r} is not a token of {self.path}")
        return i

    def id_to_piece(self, token_id: int) -> str:
        return self._tok.id_to_token(int(token_id))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and the [start, end) characters of text each one covers (for loss masks)."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        del num_threads  # the tokenizers library parallelises on its own
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Text of ids, special tokens (bos, eos, pad, chat markers) dropped."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

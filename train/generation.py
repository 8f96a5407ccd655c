"""Chat generation shared by SFT, reward-model collection, evaluation and reports.

    gen = ChatGenerator(setup, tok, max_new_tokens=48, temperature=0.7)
    out = gen.generate(params, [prompt.messages ...], rng)   # ChatOutput
    scores = world.gold(prompts, out.texts, out.terminated)  # data/worlds.py

Prompts are rendered with the one chat format (data/chat.py), left-padded to a multiple of
`bucket` tokens and cut into batches of a fixed size, so a whole evaluation compiles the sampler
once per prompt bucket.
"""

import dataclasses

import jax
import numpy as np

from data import chat
from model import sampler
from train.distributed import to_host


@dataclasses.dataclass
class ChatOutput:
    texts: list[str]
    terminated: np.ndarray  # bool [N]: the reply ended with <|end|>
    prompts: list[list[int]]  # rendered prompt ids
    tokens: np.ndarray  # int32 [N, T] generated ids (pad after the stop token)
    logprobs: np.ndarray  # fp32 [N, T] tempered log-probs of the generated tokens
    lengths: np.ndarray  # int32 [N]


class ChatGenerator:
    def __init__(
        self,
        setup,
        tok,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        greedy: bool = False,
        batch_size: int = 32,
        bucket: int = 32,
    ):
        self.tok, self.batch_size, self.bucket = tok, batch_size, bucket
        self.max_new_tokens = max_new_tokens
        n_batch = setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]
        self.batch_size = -(-batch_size // n_batch) * n_batch  # divisible by the batch axes
        self._generate = sampler.make_generate(
            setup.model_cfg,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            stop_ids=chat.stop_ids(tok),
            pad_id=tok.pad_id,
            mesh=setup.mesh,
            rules=setup.rules,
        )
        self.max_prompt = setup.model_cfg.max_seq_len - max_new_tokens

    def render(self, conversations) -> list[list[int]]:
        prompts = []
        for messages in conversations:
            ids = chat.render_prompt(self.tok, messages)
            if len(ids) > self.max_prompt:  # keep the end: the assistant header must stay
                ids = ids[-self.max_prompt :]
            prompts.append(ids)
        return prompts

    def generate(self, params, conversations, rng) -> ChatOutput:
        prompts = self.render(conversations)
        return self.generate_ids(params, prompts, rng)

    def generate_ids(self, params, prompts: list[list[int]], rng) -> ChatOutput:
        """Generation for already-rendered prompt ids (e.g. k samples of the same prompt)."""
        toks, logps, lens = [], [], []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            padded = chunk + [chunk[-1]] * (self.batch_size - len(chunk))  # fixed batch shape
            width = min(-(-max(map(len, padded)) // self.bucket) * self.bucket, self.max_prompt)
            out = self._generate(
                params,
                *sampler.left_pad(padded, self.tok.pad_id, width),
                jax.random.fold_in(rng, start),
            )
            out = to_host(out)
            toks.append(np.asarray(out.tokens_BxT)[: len(chunk)])
            logps.append(np.asarray(out.logprobs_BxT)[: len(chunk)])
            lens.append(np.asarray(out.lengths_B)[: len(chunk)])
        tokens = np.concatenate(toks)
        replies = [chat.parse_reply(self.tok, list(row)) for row in tokens]
        return ChatOutput(
            texts=[r.text for r in replies],
            terminated=np.array([r.terminated for r in replies]),
            prompts=prompts,
            tokens=tokens,
            logprobs=np.concatenate(logps),
            lengths=np.concatenate(lens),
        )

"""Chat with a checkpoint: the reply streams token by token; history stays within the context.

    python -m scripts.chat --workdir runs/sft_tiny
    python -m scripts.chat --workdir runs/sft_tiny --prompt "What is 12 plus 7?" --greedy
    python -m scripts.chat --workdir runs/sft_tiny --system "You are terse." --temperature 0.7
    python -m scripts.chat --config configs/sft/tiny.py --workdir runs/sft_tiny

The run folder's config.json (written by every stage) rebuilds the model and names the
tokenizer; --config takes the model from an experiment file instead, --tokenizer overrides the
path. Params come from <workdir>/ckpt (newest step). In the interactive mode /reset clears the
conversation and /quit (or end of input) leaves. Old exchanges are dropped from the front when
the conversation no longer fits model.max_seq_len - max_new_tokens (data.chat.truncate_history).
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import sys

import jax
import ml_collections

from data import chat
from data.tokenizer import Tokenizer, check_vocab, load_tokenizer
from model import sampler
from train import cli
from train import setup as setup_lib
from train.checkpoint import abstract_like, load_params


@dataclasses.dataclass
class Loaded:
    """A run's config, tokenizer, Setup (model config, mesh) and params."""

    config: ml_collections.ConfigDict
    tok: Tokenizer
    setup: setup_lib.Setup
    params: object


def read_config(workdir: str, config_path: str | None = None) -> ml_collections.ConfigDict:
    """The experiment file's get_config() when given, else <workdir>/config.json."""
    if config_path:
        spec = importlib.util.spec_from_file_location("_chat_config", config_path)
        if spec is None or not os.path.exists(config_path):
            raise FileNotFoundError(f"--config {config_path}: no such experiment file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: --workdir must be a run folder written by "
            "scripts.train, or pass --config with the experiment file"
        )
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_run(workdir: str, config_path: str | None = None, tokenizer: str | None = None):
    """Loaded run: model rebuilt from the config, params of the newest checkpoint."""
    config = read_config(workdir, config_path)
    tok_path = tokenizer or config.data.tokenizer
    if not os.path.exists(tok_path):
        raise FileNotFoundError(
            f"tokenizer {tok_path} (config data.tokenizer) not found; pass --tokenizer"
        )
    tok = load_tokenizer(tok_path)
    check_vocab(tok, config.model.vocab_size)
    setup = setup_lib.make_setup(config)
    shardings, abstract = setup.param_shardings()
    params, _ = load_params(os.path.join(workdir, "ckpt"), abstract_like(abstract, shardings))
    return Loaded(config, tok, setup, params)


def stream_reply(loaded: Loaded, messages, args, rng):
    """Yields the reply's text piece by piece; returns the data.chat.Reply at the end."""
    tok, cfg = loaded.tok, loaded.setup.model_cfg
    messages = chat.truncate_history(tok, messages, cfg.max_seq_len - args.max_new_tokens)
    prompt = chat.render_prompt(tok, messages)
    ids, shown = [], ""
    tokens = sampler.generate_stream(
        cfg,
        loaded.params,
        prompt,
        args.max_new_tokens,
        rng,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
        stop_ids=tuple(dict.fromkeys((*chat.stop_ids(tok), tok.eos_id))),
        pad_id=tok.pad_id,
    )
    for token in tokens:
        ids.append(token)
        text = chat.parse_reply(tok, ids).text
        # a byte-fallback character shows as U+FFFD until its last byte arrives: wait for it
        if text.startswith(shown) and not text.endswith("\ufffd"):
            yield text[len(shown) :]
            shown = text
    return chat.parse_reply(tok, ids)


def respond(loaded: Loaded, messages, args, rng, out=sys.stdout) -> chat.Reply:
    """Streams one reply to `out` and returns it."""
    pieces = stream_reply(loaded, messages, args, rng)
    shown = ""
    while True:
        try:
            piece = next(pieces)
        except StopIteration as stop:
            reply = stop.value
            break
        shown += piece
        out.write(piece)
        out.flush()
    out.write(reply.text[len(shown) :] if reply.text.startswith(shown) else "")
    out.write("" if reply.terminated else " […]")  # cut at max_new_tokens or a document end
    out.write("\n")
    return reply


def interactive(loaded: Loaded, args) -> None:
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages, turn = list(system), 0
    print("chat: /reset clears the conversation, /quit leaves")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print()
            return
        if text == "/quit":
            return
        if text == "/reset":
            messages = list(system)
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        rng = jax.random.fold_in(jax.random.key(args.seed), turn)
        print("assistant> ", end="", flush=True)
        try:
            reply = respond(loaded, messages, args, rng)
        except ValueError as e:  # the message alone does not fit the context window
            print(f"\n[{e}]")
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": reply.text})
        turn += 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="run folder (config.json, ckpt/)")
    p.add_argument("--config", default=None, help="experiment file instead of config.json")
    p.add_argument("--tokenizer", default=None, help="override config data.tokenizer")
    p.add_argument("--prompt", default=None, help="one-shot: print the reply and exit")
    p.add_argument("--system", default="", help="system message")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top_k", type=int, default=40)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> str | None:
    """Runs the chat; in one-shot mode (--prompt) returns the reply text."""
    args = parse_args(argv)
    loaded = load_run(args.workdir, args.config, args.tokenizer)
    if args.prompt is None:
        interactive(loaded, args)
        return None
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = system + [{"role": "user", "content": args.prompt}]
    return respond(loaded, messages, args, jax.random.key(args.seed)).text


if __name__ == "__main__":
    cli.run_argparse(main)

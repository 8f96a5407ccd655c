"""Score conversations with a trained reward model (normalised rewards, as PPO sees them).

    python -m scripts.score --run runs/reward_tiny --input convs.jsonl --output scored.jsonl

Input rows (JSONL): {"messages": [..., {"role": "assistant", "content": reply}]} or
{"prompt": str | messages, "response": str}; optional "terminated": false marks a reply that
never ended its turn (scored without <|end|>, at its last token). Each output row is the input
row with "reward" = gain·raw + bias added (the normalisation stored with the checkpoint).
Malformed rows are reported as file:line and skipped; past --max_bad_fraction the run stops.
"""

import json

from absl import flags

from data import chat, dialogues
from data.tokenizer import check_vocab, load_tokenizer
from train import cli, reward, reward_data
from train import setup as setup_lib
from train.metrics import atomic_write

_RUN = flags.DEFINE_string("run", None, "reward model run folder (config.json + ckpt/)")
_INPUT = flags.DEFINE_string("input", None, "JSONL of conversations")
_OUTPUT = flags.DEFINE_string("output", None, "JSONL to write (input rows + 'reward')")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "tokenizer .model (default: the run's)")
_BATCH = flags.DEFINE_integer("batch_size", 64, "rows per scoring batch")
_MAX_BAD = flags.DEFINE_float("max_bad_fraction", 0.01, "tolerated share of malformed rows")
flags.mark_flags_as_required(["run", "input", "output"])


def parse_row(obj, where: str):
    """(row, prompt messages, reply, terminated) of one input row; ValueError if malformed."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: row must be a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        chat.validate_messages(obj["messages"], where, final="assistant")
        prompt, response = obj["messages"][:-1], obj["messages"][-1]["content"]
    elif "prompt" in obj and "response" in obj:
        prompt, response = obj["prompt"], obj["response"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        chat.validate_messages(prompt, where, final="user")
        if not isinstance(response, str):
            raise ValueError(f"{where}: 'response' must be a string")
    else:
        raise ValueError(
            f"{where}: row needs 'messages' or 'prompt' and 'response' (keys: {sorted(obj)[:8]})"
        )
    terminated = obj.get("terminated", True)
    if not isinstance(terminated, bool):
        raise ValueError(f"{where}: 'terminated' must be true or false")
    return obj, prompt, response, terminated


def score_file(
    run_dir: str,
    in_path: str,
    out_path: str,
    tokenizer: str = "",
    batch_size: int = 64,
    max_bad_fraction: float = 0.01,
) -> list[float]:
    """Scores every well-formed row of in_path into out_path; returns the rewards."""
    config = reward.load_run_config(run_dir)
    tok = load_tokenizer(tokenizer or config.data.tokenizer)
    check_vocab(tok, config.model.vocab_size)
    rows = dialogues.read_jsonl(in_path, parse_row, max_bad_fraction)
    setup = setup_lib.make_setup(config)
    params, norm = reward.load_reward_model(run_dir, setup, what="--run")
    scorer = reward_data.Scorer(
        setup, setup.param_shardings("scalar")[0], batch_size, config.data.seq_len, tok.pad_id
    )
    seqs = [reward_data.render_reply(tok, p, r, t)[0] for _, p, r, t in rows]
    rewards = [float(x) for x in norm(scorer(params, seqs))]
    atomic_write(out_path, "".join(  # process 0 writes; every process holds every score
        json.dumps({**obj, "reward": value}, ensure_ascii=False) + "\n"
        for (obj, *_), value in zip(rows, rewards, strict=True)))
    return rewards


def main(argv):
    del argv
    rewards = score_file(
        _RUN.value, _INPUT.value, _OUTPUT.value, _TOKENIZER.value, _BATCH.value, _MAX_BAD.value
    )
    if rewards:
        mean = sum(rewards) / len(rewards)
        print(
            f"scored {len(rewards)} rows into {_OUTPUT.value}: mean reward {mean:.3f}, "
            f"min {min(rewards):.3f}, max {max(rewards):.3f}"
        )


if __name__ == "__main__":
    cli.run(main)

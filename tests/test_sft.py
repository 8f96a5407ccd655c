"""train/sft.py end to end on the test-size model, plus scripts/sample.py and scripts/chat.py.

One tiny "pretraining" checkpoint (random params saved with the shared Checkpoints, step and
optimizer counters set to non-zero values so a stage that kept them would show it) and ONE
SFT run shared by the module; the checks read its run folder.
"""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import model_config
from configs.sft import tiny as sft_tiny
from data import chat, corpus
from data import tasks as tasks_lib
from data.dialogues import DataError
from scripts import chat as chat_script
from scripts import sample as sample_script
from train import losses, sft
from train import setup as setup_lib
from train.checkpoint import Checkpoints
from train.metrics import read_metrics
from train.step import make_eval_step

STEPS = 40
PRETRAIN_STEP = 7
DIALOGUES = [
    [
        {"role": "user", "content": "Hello, how are you today?"},
        {"role": "assistant", "content": "I am fine, thank you."},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hello, how are you?"},
        {"role": "user", "content": "I am fine."},
        {"role": "assistant", "content": "Happy to hear it."},
    ],
]


def make_config(tok_path: str, init_from: str, dialogues_path: str):
    c = sft_tiny.get_config()
    c.model.update(model_config("test", vocab_size=384))
    c.init_from = init_from
    c.data.update(
        dict(
            tokenizer=tok_path,
            seq_len=64,
            batch_size=8,
            n_tasks=400,
            n_val_tasks=16,
            task_word_sources="",
            task_chatty_fraction=0.0,  # chatty replies would not fit seq_len 64 at vocab 384
            val_fraction=0.3,
            sft_mixture=f"tasks=0.8,local:{dialogues_path}=0.2",
        )
    )
    c.optim.update(dict(lr=3e-3, warmup_steps=5))
    c.train.update(
        dict(
            steps=STEPS,
            log_every=1,
            eval_every=STEPS,
            ckpt_every=STEPS,
            sample_every=STEPS,
            eval_batches=2,
            async_checkpoint=False,
        )
    )
    c.eval.update(dict(n_prompts=8, max_new_tokens=16, batch_size=8, n_side_by_side=2))
    return c


@pytest.fixture(scope="module")
def env(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    dialogues = root / "dialogues.jsonl"
    dialogues.write_text("".join(json.dumps({"messages": m}) + "\n" for m in DIALOGUES * 10))
    config = make_config(tokenizer.path, str(root / "pretrain"), str(dialogues))
    setup = setup_lib.make_setup(config)
    params, params_sh = setup.init_params(seed=123)
    state, _, _ = setup_lib.make_train_state(setup, params, params_sh, config.optim, 10, 123)
    # a "trained" state: non-zero step and optimizer counters
    bump = lambda x: x + PRETRAIN_STEP if jnp.issubdtype(x.dtype, jnp.integer) else x
    state = dataclasses.replace(
        state, step=state.step + PRETRAIN_STEP, opt_state=jax.tree.map(bump, state.opt_state)
    )
    ckpt = Checkpoints(str(root / "pretrain" / "ckpt"), async_save=False)
    ckpt.save(PRETRAIN_STEP, state, force=True)
    ckpt.close()
    return root, config, setup


@pytest.fixture(scope="module")
def run(env, tokenizer):
    root, config, _ = env
    workdir = str(root / "sft")
    return workdir, sft.run(config, workdir)


def test_first_loss_uses_pretrain_params(env, run, tokenizer):
    _, config, setup = env
    workdir, _ = run
    train_sets, _ = sft.build_conversation_sets(config.data, None, config.seed)
    it, n_truncated = sft.make_train_iterator(
        tokenizer, train_sets, config.data, config.seed, setup.mesh
    )
    batch = next(it)
    assert n_truncated == 0
    eval_step = make_eval_step(
        losses.make_lm_loss(setup.model()), setup.param_shardings()[0], setup.mesh, setup.rules
    )

    def loss(params):
        sums = eval_step(params, batch)
        return float(sums["loss"]) / float(sums["weight"])

    pretrained, _ = sft.load_init_params(config.init_from, setup)
    first = read_metrics(workdir, "train")[0]
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(loss(pretrained), rel=1e-4)
    # the match is specific: other params (here: the pretrained ones, shrunk) give another loss
    assert abs(loss(jax.tree.map(lambda x: 0.5 * x, pretrained)) - first["loss"]) > 1e-3


def test_optimizer_state_is_fresh(run):
    _, result = run
    assert int(result.state.step) == STEPS  # not PRETRAIN_STEP + STEPS
    counts = [
        int(x)
        for x in jax.tree.leaves(result.state.opt_state)
        if jnp.issubdtype(x.dtype, jnp.integer)
    ]
    assert counts and all(c == STEPS for c in counts)


def test_loss_decreases_and_summary(run):
    workdir, result = run
    losses_ = [r["loss"] for r in read_metrics(workdir, "train")]
    assert np.mean(losses_[-5:]) < 0.8 * np.mean(losses_[:3])
    with open(f"{workdir}/summary.json") as f:
        summary = json.load(f)

    def numbers(x):
        if isinstance(x, dict):
            return [v for y in x.values() for v in numbers(y)]
        return [x] if isinstance(x, int | float) else []

    assert all(math.isfinite(v) for v in numbers(summary))
    assert summary["n_prompts"] == 8 and summary["steps"] == STEPS
    for key in ("base_gold", "sft_gold", "gold_diff"):
        s = summary[key]
        assert s["lo"] <= s["mean"] <= s["hi"]
    assert 0 <= summary["sft_terminated"] <= 1
    assert summary["val_loss"] == pytest.approx(result.last_eval["loss"])
    with open(f"{workdir}/answers.md") as f:
        answers = f.read()
    assert sft.CHAT_PROMPTS[0] in answers
    assert "task_words" in result.extras


def _expected_mask(tokens, segments, tok):
    """1 where the NEXT token of the same segment is assistant content or its <|end|>,
    recomputed from the tokens alone by tracking the current role."""
    assistant, end = tok.special_id("<|assistant|>"), tok.special_id(chat.END)
    roles = {tok.special_id(t) for t in chat.ROLE_TOKENS.values()}
    inside = np.zeros(len(tokens), bool)  # token t is assistant content or its <|end|>
    in_assistant = False
    for t, tid in enumerate(tokens):
        if t == 0 or segments[t] != segments[t - 1]:
            in_assistant = False
        if tid in roles:
            in_assistant = tid == assistant
            continue
        inside[t] = in_assistant
        if tid == end:
            in_assistant = False
    same = (segments[1:] == segments[:-1]) & (segments[1:] != 0)
    return np.append(inside[1:] & same, False).astype(np.int32)


def test_loss_mask_covers_only_assistant_tokens(env, tokenizer):
    _, config, setup = env
    train_sets, _ = sft.build_conversation_sets(config.data, None, config.seed)
    it, _ = sft.make_train_iterator(tokenizer, train_sets, config.data, config.seed, setup.mesh)
    for _ in range(2):
        batch = {k: np.asarray(v) for k, v in next(it).items()}
        for row in range(len(batch["tokens"])):
            tokens, segments = batch["tokens"][row], batch["segment_ids"][row]
            mask = batch["loss_mask"][row]
            np.testing.assert_array_equal(mask, _expected_mask(tokens, segments, tokenizer))
            np.testing.assert_array_equal(
                batch["targets"][row][:-1][mask[:-1] == 1], tokens[1:][mask[:-1] == 1]
            )
        assert batch["loss_mask"].sum() > 0


def test_missing_pretrain_checkpoint_names_folder(env, tmp_path):
    _, config, _ = env
    config = config.copy_and_resolve_references()  # the module's config stays untouched
    config.init_from = str(tmp_path / "no_such_run")
    with pytest.raises(FileNotFoundError, match="no_such_run/ckpt"):
        sft.run(config, str(tmp_path / "out"))


def test_sample_script_gold_only_for_tasks(run, tmp_path):
    workdir, _ = run
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "What is 3 plus 4?"},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": 'Spell "cat" backwards.'},
            ],
            "id": 7,
        },
        {"prompt": "Hello, how are you today?"},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    common = ["--workdir", workdir, "--greedy", "--max_new_tokens", "16", "--batch_size", "8"]
    got = sample_script.main([*common, "--prompts", str(prompts), "--out", str(out)])
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == got and len(got) == 3
    assert got[1]["id"] == 7
    for row in got:
        assert isinstance(row["response"], str) and isinstance(row["terminated"], bool)
    task = tasks_lib.gold_for_prompt(rows[0]["prompt"])
    assert got[0]["gold"] == tasks_lib.gold(task, got[0]["response"], got[0]["terminated"])
    assert 0.0 <= got[1]["gold"] <= 1.0
    assert got[2]["gold"] is None
    # the streamed greedy reply of the chat script is the batched greedy reply
    reply = chat_script.main(
        ["--workdir", workdir, "--prompt", rows[0]["prompt"], "--greedy", "--max_new_tokens", "16"]
    )
    assert isinstance(reply, str) and reply == got[0]["response"]


def test_sample_script_reports_bad_rows(tmp_path):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text(
        '{"prompt": "What is 1 plus 2?"}\n{"promt": "typo"}\n'
        '{"messages": [{"role": "assistant", "content": "x"}]}\n'
    )
    with pytest.raises(DataError, match=r"bad.jsonl:2.*\n.*bad.jsonl:3"):
        sample_script.read_prompts(str(prompts))


def test_common_words():
    texts = ["The cat and the dog. THE END", "a dog, a cat; don't café x2"]
    assert corpus.common_words(texts, 4) == ["the", "a", "cat", "dog"]
    # "don't" holds an apostrophe and "café" a non-ASCII letter: neither is a task word
    assert corpus.common_words(texts, 100) == ["the", "a", "cat", "dog", "and", "end", "x"]

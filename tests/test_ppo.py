"""train/ppo.py end to end on a tiny model with a toy reward, plus best-of-n's estimator.

One uninterrupted run and one interrupted + resumed run share compiled functions
(train.ppo_phases caches them on the settings), so the module compiles the sampler, the score
and the update once; each further run costs seconds.

The runs use one device of conftest's 8 virtual CPU devices. On 2 virtual devices (fsdp=2) the
uninterrupted run hung once in a full `make test` (2026-12-02, both xdist workers idle, the
test process waiting in `to_host` after a PPO iteration), as it had aborted once before with
XLA:CPU's default collective timeout: on 2 loaded cores a device can block the pool's threads
in one collective while its peer waits for a thread to reach it, an artefact of virtual
devices. PPO on a sharded mesh is covered by tests/test_multiprocess_stages.py (two real
processes against one).
"""

import copy
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import model_config
from configs.ppo import tiny
from model import sharding
from model.config import ModelConfig
from train import best_of_n, ppo, rl_math
from train import setup as setup_lib
from train.checkpoint import Checkpoints, abstract_like, load_params, tree_equal
from train.ppo_phases import PPOState
from train.ppo_setup import hparams_from_config

ITERATIONS = 6
N_DEVICES = 1
HIT = jnp.arange(0, 384, 4)  # the toy reward counts reply tokens from this quarter of the vocab


def toy_reward(reward_state, batch):
    """Number of reply tokens in HIT (the reward model's state is ignored)."""
    del reward_state
    return jnp.sum(jnp.isin(batch["response"], HIT) * batch["mask"], axis=1)


def _config(tokenizer, root):
    c = tiny.get_config()
    with c.unlocked():
        c.model = model_config("test", vocab_size=384)
    c.data.tokenizer = tokenizer.path
    c.sft_from, c.reward_from = f"{root}/sft", f"{root}/rm"
    c.prompts.n_prompts = 64
    c.mesh.fsdp = N_DEVICES
    c.rollout.batch_size, c.rollout.max_new_tokens, c.rollout.temperature = 128, 8, 0.7
    c.ppo.iterations, c.ppo.epochs, c.ppo.minibatches = ITERATIONS, 4, 2
    c.ppo.eos_trick = False  # a random policy almost never ends its reply
    c.kl.coef = 0.01  # the toy reward is worth a few tokens; β = 0.05 would hold it back
    c.optim.lr, c.optim.warmup_steps, c.critic_optim.lr = 3e-3, 0, 1e-2
    c.eval.n_prompts, c.eval.every = 16, 3
    c.best_of_n.ns, c.best_of_n.n_prompts = "1,2", 8
    c.train.ckpt_every = 100  # only the stop / the end checkpoint
    return c


def _setup_on_first_devices(config):
    """make_setup on the first N_DEVICES devices (see the module docstring)."""
    mesh = sharding.make_mesh(dict(config.mesh.items()), devices=jax.devices()[:N_DEVICES])
    return setup_lib.Setup(
        ModelConfig.from_config(config.model), mesh, sharding.make_rules(dict(config.mesh.rules))
    )


@pytest.fixture(scope="module")
def env(tokenizer, tmp_path_factory):
    """Random 'SFT' and 'reward' checkpoints in run folders, as the earlier stages leave them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(setup_lib, "make_setup", _setup_on_first_devices)
        yield _write_checkpoints(tokenizer, tmp_path_factory)


def _write_checkpoints(tokenizer, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ppo"))
    config = _config(tokenizer, root)
    setup = setup_lib.make_setup(config)
    for folder, head, extras in (
        (config.sft_from, "lm", {"task_words": []}),
        (config.reward_from, "scalar", {"reward_gain": 1.0, "reward_bias": 0.0}),
    ):
        params, _ = setup.init_params(1, head)
        ckpt = Checkpoints(f"{folder}/ckpt", async_save=False)
        ckpt.save(0, {"params": params}, extras=extras, force=True)
        ckpt.close()
    return config, setup, root


def _metrics(workdir, split="train"):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {
        r["step"]: {k: v for k, v in r.items() if not k.startswith("time")}
        for r in rows
        if r["split"] == split
    }


@pytest.fixture(scope="module")
def full(env):
    config, _, root = env
    return ppo.run(config, f"{root}/full", reward_fn=toy_reward), f"{root}/full"


def _buffers(tree) -> set:
    """Device buffer addresses (first shard) of every array in tree."""
    return {x.addressable_shards[0].data.unsafe_buffer_pointer() for x in jax.tree.leaves(tree)}


def _saved_params(setup, folder, head):
    sh, abstract = setup.param_shardings(head)
    return load_params(f"{folder}/ckpt", abstract_like(abstract, sh))[0]


def test_toy_reward_rises_while_frozen_roles_stay_bit_identical(env, full):
    config, setup, _ = env
    result, workdir = full
    rewards = [m["reward"] for _, m in sorted(_metrics(workdir).items())]
    assert len(rewards) == ITERATIONS and not result.interrupted
    assert np.mean(rewards[-2:]) > rewards[0] + 0.8, rewards
    sft = _saved_params(setup, config.sft_from, "lm")
    rm = _saved_params(setup, config.reward_from, "scalar")
    for before, after in ((sft, result.roles.reference), (rm, result.roles.reward["params"])):
        for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
            assert np.array_equal(np.asarray(x), np.asarray(y))
    assert not tree_equal(sft, result.state.params)  # the actor trained
    assert not tree_equal(rm, result.state.critic_params)  # and so did the critic
    assert result.summary["iterations"] == ITERATIONS
    assert [r["n"] for r in result.summary["best_of_n"]] == [1, 2]


def test_frozen_roles_never_reach_an_optimizer(full):
    result, _ = full
    state = result.state
    assert isinstance(state, PPOState)
    actor_tree, critic_tree = (
        jax.tree.structure(state.params),
        jax.tree.structure(state.critic_params),
    )

    def param_shaped(opt_state, tree):
        nodes = jax.tree.leaves(opt_state, is_leaf=lambda n: jax.tree.structure(n) == tree)
        return [n for n in nodes if jax.tree.structure(n) == tree]

    assert len(param_shaped(state.opt_state, actor_tree)) == 2  # Adam's mu and nu of the actor
    assert len(param_shaped(state.critic_opt_state, critic_tree)) == 2
    assert param_shaped(state.opt_state, critic_tree) == []
    # no buffer of a frozen role is held by the trained state (nothing aliased, nothing donated)
    assert not _buffers((result.roles.reference, result.roles.reward)) & _buffers(state)


def test_all_four_roles_load_sharded_over_a_two_device_mesh(env):
    """The roles are sharded over the mesh (fsdp), not replicated copies (the runs above use
    one device; see the module docstring)."""
    config, setup, _ = env
    mesh = sharding.make_mesh(dict(config.mesh.items(), fsdp=2), devices=jax.devices()[:2])
    two = setup_lib.Setup(setup.model_cfg, mesh, setup.rules)
    roles, _ = ppo.load_roles(config, two)
    for role in (roles.actor, roles.critic, roles.reference, roles.reward["params"]):
        assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(role))


def test_roles_come_from_their_checkpoints(env):
    config, setup, _ = env
    roles, words = ppo.load_roles(config, setup)
    sft = _saved_params(setup, config.sft_from, "lm")
    rm = _saved_params(setup, config.reward_from, "scalar")
    assert tree_equal(roles.actor, sft) and tree_equal(roles.reference, sft)
    assert tree_equal(roles.critic, rm) and tree_equal(roles.reward["params"], rm)  # trl #769
    assert float(roles.reward["gain"]) == 1.0 and words is None  # task_words [] → fallback
    assert not _buffers(roles.actor) & _buffers(roles.reference)  # donating one keeps the other
    assert not _buffers(roles.critic) & _buffers(roles.reward["params"])


def test_logged_kl_is_the_kl_in_the_reward(full):
    result, workdir = full
    b, logged = result.last_batch, _metrics(workdir)[ITERATIONS]
    beta = logged["beta"]
    assert beta > 0
    last = np.asarray(rl_math.last_token_mask(b["mask"]))
    kl_from_reward_B = -(b["rewards"] - b["score"][:, None] * last).sum(1) / beta
    np.testing.assert_allclose(kl_from_reward_B.mean(), logged["kl"], rtol=1e-4, atol=1e-5)
    k1_B = ((b["old_logp"] - b["ref_logp"]) * b["mask"]).sum(1)  # default estimator k1
    np.testing.assert_allclose(k1_B, kl_from_reward_B, rtol=1e-4, atol=1e-4)
    assert logged["kl"] > 0.1  # the policy moved, so the check above is not 0 == 0


def test_recomputed_logprobs_equal_the_samplers(full):
    result, workdir = full
    b = result.last_batch
    diff = np.abs(b["old_logp"] - b["sampler_logp"]) * b["mask"]
    assert diff.max() <= 1e-5
    assert b["mask"].sum() > 0 and np.abs(b["old_logp"]).max() > 0.1
    assert all(m["logprob_diff_max"] <= 1e-5 for m in _metrics(workdir).values())


def test_resume_after_interruption_is_bit_for_bit(env, full):
    config, _, root = env
    result, workdir = full
    cut = f"{root}/cut"
    first = ppo.run(config, cut, reward_fn=toy_reward, stop_after=ITERATIONS // 2)
    assert first.interrupted and first.iteration == ITERATIONS // 2 and first.summary is None
    resumed = ppo.run(config, cut, reward_fn=toy_reward)
    assert resumed.iteration == ITERATIONS and not resumed.interrupted
    assert tree_equal(result.state, resumed.state)  # actor, critic, optimizers, β, RNG
    assert _metrics(cut) == _metrics(workdir)
    assert _metrics(cut, "eval") == _metrics(workdir, "eval")
    assert resumed.summary["gold_diff"] == result.summary["gold_diff"]


def test_critic_warmup_trains_the_critic_only(env):
    config, setup, root = env
    c = copy.deepcopy(config)
    c.ppo.critic_warmup = 1  # not a compile-time setting: only the warm-up update compiles
    result = ppo.run(c, f"{root}/warmup", reward_fn=toy_reward, stop_after=1)
    assert result.last_metrics["critic_warmup"] == 1.0
    assert tree_equal(result.state.params, _saved_params(setup, c.sft_from, "lm"))
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(result.state.opt_state))
    assert not tree_equal(result.state.critic_params, _saved_params(setup, c.reward_from, "scalar"))


def test_config_errors_name_the_key(env):
    c = copy.deepcopy(env[0])
    c.rollout.batch_size, c.ppo.minibatches = 100, 3
    with pytest.raises(ValueError, match="rollout.batch_size=100"):
        hparams_from_config(c, 32, 7, 0)
    c = copy.deepcopy(env[0])
    c.kl.estimator = "k4"
    with pytest.raises(ValueError, match="kl.estimator='k4'"):
        hparams_from_config(c, 32, 7, 0)


def test_every_stop_id_of_a_model_template_ends_a_rollout(env):
    """A model's template may stop on several ids (Llama 3: <|eot_id|> and <|end_of_text|>)."""
    assert hparams_from_config(env[0], 32, (7, 9), 0).stop_ids == (7, 9)
    assert hparams_from_config(env[0], 32, 7, 0).stop_ids == (7,)


def test_prompt_stream_resumes_at_its_position():
    a = ppo.PromptStream(10, seed=3)
    seen = a.next(7) + a.next(7)  # crosses an epoch: reshuffled, every index once per epoch
    assert sorted(seen[:10]) == list(range(10)) and seen[10:] != seen[:4]
    b = ppo.PromptStream(10, seed=3)
    b.set_state(json.loads(json.dumps({"position": 7})))
    assert b.next(7) == seen[7:]


def test_best_of_n_estimator_equals_enumeration_over_subsets():
    rng = np.random.default_rng(0)
    n_samples = 6
    rewards = rng.integers(0, 4, size=(3, n_samples)).astype(float)  # ties on purpose
    gold = rng.random((3, n_samples))
    for n in range(1, n_samples + 1):
        got = best_of_n.best_of_n_expectation(gold, rewards, n)
        want = []
        for r, g in zip(rewards, gold):
            order = np.argsort(r, kind="stable")  # the tie-break the estimator documents
            rank = np.empty(n_samples, int)
            rank[order] = np.arange(n_samples)
            picks = [
                g[max(sub, key=lambda i: rank[i])]
                for sub in itertools.combinations(range(n_samples), n)
            ]
            want.append(np.mean(picks))
        np.testing.assert_allclose(got, want, rtol=1e-12)
    assert best_of_n.best_of_n_expectation(gold, rewards, 1).tolist() == pytest.approx(
        gold.mean(1).tolist()
    )
    with pytest.raises(ValueError, match="n=7"):
        best_of_n.bon_weights(n_samples, 7)

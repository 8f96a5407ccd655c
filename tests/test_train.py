"""The shared training machinery: step, accumulation, sharding parity, loop, checkpoints."""

import dataclasses
import glob
import json
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from model import sharding
from model.config import ModelConfig
from model.transformer import Transformer
from train import checkpoint, losses, optim
from train.loop import Hooks, NonFiniteLoss, fit
from train.state import init_state, state_shardings
from train.step import make_train_step

B, L = 8, 16


def _cfg(**kw):
    return ModelConfig.from_config(common.model_config("test", **kw))


def _batch(seed, vocab=320):
    rng = np.random.default_rng(seed)
    t = rng.integers(3, vocab, (B, L + 1)).astype(np.int32)
    pos = np.broadcast_to(np.arange(L), (B, L)).astype(np.int32)
    return dict(tokens=t[:, :-1], targets=t[:, 1:], positions=pos,
                segment_ids=np.ones((B, L), np.int32), loss_mask=np.ones((B, L), np.int32))


class Batches:
    """A deterministic checkpointable stream; can send itself SIGTERM at a given batch."""

    def __init__(self, fixed=False, kill_at=None):
        self.i, self.fixed, self.kill_at = 0, fixed, kill_at

    def __next__(self):
        if self.kill_at is not None and self.i == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        b = _batch(0 if self.fixed else self.i)
        self.i += 1
        return b

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


def _trainer(mesh_sizes, grad_accum=1, steps=6, lr=3e-3, cfg=None, seed=0):
    cfg = cfg or _cfg()
    model = Transformer(cfg)
    mesh, rules = sharding.make_mesh(mesh_sizes, jax.devices()[: int(np.prod(
        [v for v in mesh_sizes.values()]))]), sharding.make_rules()
    ones = jnp.ones((1, L), jnp.int32)
    params, params_sh = sharding.init_params(lambda r: model.init(r, ones, ones, ones)["params"],
                                             jax.random.key(seed), mesh, rules)
    tx = optim.make_optimizer(common.optim_config(lr=lr, warmup_steps=0), steps)
    state_sh = state_shardings(params_sh, tx, params, sharding.replicated(mesh))
    state = jax.device_put(init_state(params, tx, seed), state_sh)
    step = make_train_step(losses.make_lm_loss(model), tx, grad_accum, state_sh, mesh, rules)
    return state, state_sh, step


ONE = {"data": 1, "fsdp": 1, "tensor": 1}


def _max_diff(a, b):
    a, b = jax.device_get((a, b))
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                             jax.tree.leaves(b)))


def test_grad_accumulation_equals_big_batch():
    s1, _, step1 = _trainer(ONE, grad_accum=1)
    s4, _, step4 = _trainer(ONE, grad_accum=4)
    for i in range(2):
        s1, m1 = step1(s1, _batch(i))
        s4, m4 = step4(s4, _batch(i))
    assert abs(float(m1["loss"]) - float(m4["loss"])) < 1e-5
    assert abs(float(m1["grad_norm"]) - float(m4["grad_norm"])) < 1e-5 * float(m1["grad_norm"])
    # Sums in another order differ by ulps; Adam's m/sqrt(v) can scale those up to ~1e-6·lr·steps.
    assert _max_diff(s1.params, s4.params) < 1e-5


def test_sharded_train_step_equals_single_device():
    s1, _, step1 = _trainer(ONE)
    s8, _, step8 = _trainer({"data": 2, "fsdp": 2, "tensor": 2})
    for i in range(2):
        s1, m1 = step1(s1, _batch(i))
        s8, m8 = step8(s8, _batch(i))
    assert abs(float(m1["loss"]) - float(m8["loss"])) < 1e-5
    assert _max_diff(s1.params, s8.params) < 1e-5  # fp32, reductions in another order
    spec = s8.params["layers"]["block"]["mlp"]["up_proj"]["kernel"].sharding.spec
    assert tuple(spec) == (None, "fsdp", "tensor")


def test_overfitting_one_batch_drives_loss_near_zero():
    state, _, step = _trainer(ONE, steps=150, lr=1e-2)
    first = None
    for _ in range(150):
        state, m = step(state, _batch(0))
        first = first if first is not None else float(m["loss"])
    assert first > 5.0  # ~log(vocab) at init
    assert float(m["loss"]) < 0.05


def _fit(workdir, steps_done, kill_at=None, mesh=ONE):
    state, state_sh, step = _trainer(mesh, steps=6)
    cfg = common.train_config(steps=6, ckpt_every=2, log_every=1, eval_every=100,
                              async_checkpoint=True)
    return fit(workdir=workdir, cfg=cfg, state=state, state_sh=state_sh, step_fn=step,
               data_iter=Batches(kill_at=kill_at), hooks=Hooks(tokens_per_step=B * L))


def _train_losses(workdir):
    import json

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_interrupted_run_resumes_bit_for_bit(tmp_path):
    full = _fit(str(tmp_path / "full"), 6)
    # SIGTERM arrives while batch 4 is fetched: step 4 completes, is saved, the run stops.
    first = _fit(str(tmp_path / "cut"), 6, kill_at=3)
    assert first.interrupted and first.step == 4
    resumed = _fit(str(tmp_path / "cut"), 6)
    assert resumed.step == 6 and not resumed.interrupted
    assert checkpoint.tree_equal(full.state.params, resumed.state.params)
    assert checkpoint.tree_equal(full.state.opt_state, resumed.state.opt_state)
    assert checkpoint.tree_equal(full.state.rng, resumed.state.rng)
    cut = _train_losses(str(tmp_path / "cut"))
    assert all(cut[s] == v for s, v in _train_losses(str(tmp_path / "full")).items())


@pytest.fixture(scope="module")
def saved_on_eight(tmp_path_factory):
    """(losses of an uninterrupted 6-step run, folder of a run stopped at step 4), both on
    mesh (1, 8, 1)."""
    root = tmp_path_factory.mktemp("eight")
    eight = {"data": 1, "fsdp": 8, "tensor": 1}
    _fit(str(root / "full"), 6, mesh=eight)
    first = _fit(str(root / "cut"), 6, kill_at=3, mesh=eight)
    assert first.interrupted and first.step == 4
    return _train_losses(str(root / "full")), str(root / "cut")


@pytest.mark.parametrize("other", [{"data": 2, "fsdp": 2, "tensor": 2},
                                   {"data": 1, "fsdp": 4, "tensor": 1}])
def test_a_run_resumes_on_another_mesh_and_device_count(saved_on_eight, tmp_path, other):
    """Saved on (1, 8, 1), resumed on `other`: orbax restores onto the target shardings the
    rules table gives the new mesh. Not bitwise: another mesh sums in another order."""
    full, saved = saved_on_eight
    folder = str(tmp_path / "cut")
    shutil.copytree(saved, folder)
    resumed = _fit(folder, 6, mesh=other)
    assert resumed.step == 6
    leaf = jax.tree.leaves(resumed.state.params)[0]
    assert dict(leaf.sharding.mesh.shape) == other  # restored onto the new mesh
    cut = _train_losses(folder)
    np.testing.assert_allclose([cut[s] for s in (5, 6)], [full[s] for s in (5, 6)], rtol=1e-5)


def test_nan_loss_stops_with_step_named_and_keeps_last_good_checkpoint(tmp_path):
    state, state_sh, step = _trainer(ONE, steps=6)

    def poisoned(s, batch):
        s, m = step(s, batch)
        bad = s.step >= 4
        return s, {**m, "loss": jnp.where(bad, jnp.nan, m["loss"])}

    cfg = common.train_config(steps=6, ckpt_every=2, log_every=1, eval_every=100)
    with pytest.raises(NonFiniteLoss, match="at step 4.*step 2"):
        fit(workdir=str(tmp_path), cfg=cfg, state=state, state_sh=state_sh, step_fn=poisoned,
            data_iter=Batches(), hooks=Hooks())
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["2"]


def test_resume_into_a_different_model_shape_is_a_clear_error(tmp_path):
    _fit(str(tmp_path), 6)
    before = {p: os.path.getsize(p) for p in glob.glob(f"{tmp_path}/ckpt/**", recursive=True)
              if os.path.isfile(p)}
    wider = _cfg(d_ff=96)
    state, state_sh, step = _trainer(ONE, steps=6, cfg=wider)
    with pytest.raises(ValueError, match="different model shape"):
        fit(workdir=str(tmp_path), cfg=common.train_config(steps=8), state=state,
            state_sh=state_sh, step_fn=step, data_iter=Batches(), hooks=Hooks())
    after = {p: os.path.getsize(p) for p in glob.glob(f"{tmp_path}/ckpt/**", recursive=True)
             if os.path.isfile(p)}
    assert after == before  # nothing saved was touched


def test_load_params_reads_params_only(tmp_path):
    done = _fit(str(tmp_path), 6)
    model = Transformer(_cfg())
    ones = jnp.ones((1, L), jnp.int32)
    abstract = jax.eval_shape(lambda r: model.init(r, ones, ones, ones)["params"],
                              jax.random.key(0))
    abstract = jax.tree.map(lambda b: b.value if hasattr(b, "value") else b, abstract,
                            is_leaf=lambda x: hasattr(x, "value"))
    # A relative path, as a pipeline run from the repo root passes it.
    params, extras = checkpoint.load_params(os.path.relpath(tmp_path / "ckpt"), abstract)
    assert checkpoint.tree_equal(params, done.state.params)
    assert extras == {}


def test_model_config_rejects_unknown_keys():
    cfg = common.model_config("test")
    cfg_dict = dataclasses.asdict(ModelConfig.from_config(cfg))
    cfg_dict["n_layer"] = 3
    with pytest.raises(ValueError, match="model.n_layer"):
        ModelConfig.from_config(cfg_dict)


def test_metrics_writer_mirrors_scalars_to_tensorboard_and_leaves_torch_importable(tmp_path):
    import sys

    from train.metrics import MetricsWriter

    writer = MetricsWriter(str(tmp_path))
    writer.write(3, {"loss": 1.25, "note": "text"})
    writer.close()
    assert sys.modules.get("torch", "absent") is not None  # never left blocked
    (record,) = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert (record["step"], record["loss"], record["note"]) == (3, 1.25, "text")
    events = [p for p in (tmp_path / "tb").iterdir() if "tfevents" in p.name]
    assert len(events) == 1 and b"train/loss" in events[0].read_bytes()

"""Checkpoints: one orbax CheckpointManager (async) per run folder.

A checkpoint holds the TrainState (params, optimizer state, step, RNG), the data iterator
state and stage extras (KL controller, reward normalisation ...) as JSON. Orbax writes into a
temporary folder and renames it when complete, so an interrupted save never damages the last
good checkpoint. Three guards on top:

- Only finite state is saved: a NaN/Inf anywhere in the state refuses the save (so rotation
  never deletes the last finite checkpoint for a NaN one).
- Every save records checksums of the state's bits (`integrity`): orbax restores a bit-flipped
  array without complaint, so a restore recomputes them and treats a mismatch as corruption.
- A newest step that fails to restore (truncated file, missing metadata, checksum) is reported
  in one line and moved aside to <run>/ckpt_corrupt/, and the run falls back to the newest step
  that restores; when none does, a clear error and nothing is moved.

Restoring checks shapes first: resuming into a different model is a clear error, not a stack
trace from deep inside orbax.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from train import distributed

ITEMS = ("state", "data", "extras")
INTEGRITY = "_integrity"  # extras key of the checksums (removed again on restore)


class NonFiniteState(RuntimeError):
    pass


class CorruptCheckpoint(RuntimeError):
    pass


class Checkpoints:
    def __init__(self, directory: str, keep: int = 2, async_save: bool = True,
                 create: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=create, enable_async_checkpointing=async_save
        )
        handlers = dict(
            state=ocp.StandardCheckpointHandler(),
            data=ocp.JsonCheckpointHandler(),
            extras=ocp.JsonCheckpointHandler(),
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def last_good(self) -> str:
        """'checkpoint step N is kept in DIR' or 'no checkpoint was saved yet', for messages."""
        step = self.latest_step()
        if step is None:
            return f"no checkpoint was saved yet in {self.directory}"
        return f"the last good checkpoint (step {step}) is kept in {self.directory}"

    def save(self, step: int, state, data_state=None, extras=None, force: bool = False):
        finite, sums = integrity(state)
        if not finite:
            raise NonFiniteState(
                f"the state after step {step} holds NaN/Inf values, so it was not saved; "
                f"{self.last_good()}"
            )
        extras = {**(extras or {}), INTEGRITY: sums}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state if data_state is not None else {}),
            extras=ocp.args.JsonSave(extras),
        )
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state):
        """(state, data_state, extras) at `step`; `abstract_state` gives shapes and shardings.
        Raises CorruptCheckpoint when the step cannot be read or fails its checksum, ValueError
        when it holds another model."""
        try:
            saved = self.manager.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001 - any failure to read the metadata is corruption
            raise CorruptCheckpoint(f"its metadata cannot be read ({_first_line(e)})") from None
        if saved is None:
            raise CorruptCheckpoint("its state metadata is missing")
        if hasattr(abstract_state, "params"):  # optimizer trees need not be keyed like dicts
            check_compatible(saved["params"], abstract_state.params, self.directory)
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    extras=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # noqa: BLE001 - a file that cannot be read is corruption
            raise CorruptCheckpoint(f"an array cannot be read ({_first_line(e)})") from None
        extras = dict(restored["extras"] or {})
        verify(extras.pop(INTEGRITY, None), restored["state"], "state")
        return restored["state"], restored["data"], extras

    def restore_latest(self, abstract_state):
        """(step, state, data_state, extras) of the newest step that restores, or None when the
        folder has no checkpoint. Newer steps that fail are moved aside (never deleted)."""
        self.manager.reload()
        steps = sorted(self.manager.all_steps(), reverse=True)
        failed = []
        for step in steps:
            try:
                restored = self.restore(step, abstract_state)
            except CorruptCheckpoint as e:
                print(f"warning: checkpoint step {step} in {self.directory} does not restore: {e}",
                      flush=True)
                failed.append((step, str(e)))
                continue
            for bad, _ in failed:
                self._move_aside(bad)
            return (step, *restored)
        if failed:
            raise CorruptCheckpoint(
                f"no checkpoint in {self.directory} restores ("
                + "; ".join(f"step {s}: {why}" for s, why in failed)
                + "); nothing was moved or deleted: remove the folder to start over"
            )
        return None

    def _move_aside(self, step: int):
        aside = os.path.join(os.path.dirname(self.directory), "ckpt_corrupt")
        target = os.path.join(aside, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:
            os.makedirs(aside, exist_ok=True)
            os.rename(os.path.join(self.directory, str(step)), target)
            print(f"moved the unreadable checkpoint step {step} to {target}", flush=True)
        distributed.barrier("ckpt_corrupt")  # every process sees the move before reloading
        self.manager.reload()

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:limit] + ("…" if len(text) > limit else "")


# ---------------------------------------------------------------------- integrity


def _bits_u32(x):
    """The array's bits as uint32 (16-bit types widened; PRNG keys as their key data)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)


def _leaf_sum(x):
    """Σ bits · (2·flat_index + 1) mod 2^32: any single flipped bit changes it (odd weights),
    and so does moving values around. Built from per-axis iotas: no reshape, no resharding."""
    bits = _bits_u32(x)
    index = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(bits.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride)
        stride *= bits.shape[axis]
    return jnp.sum(bits * (index * 2 + 1), dtype=jnp.uint32)


def _tree_sum(tree):
    total = jnp.uint32(0)
    for i, x in enumerate(jax.tree.leaves(tree)):
        total = total + _leaf_sum(x) * jnp.uint32(2 * i + 1)
    return total


@jax.jit
def _checksum(tree):
    return _tree_sum(tree)


@jax.jit
def _integrity(state, params):
    """(state checksum, params checksum, every float finite) in one pass over the state."""
    finite = jnp.bool_(True)
    for x in jax.tree.leaves(state):
        if jnp.issubdtype(x.dtype, jnp.floating):
            finite = finite & jnp.all(jnp.isfinite(x))
    return _tree_sum(state), _tree_sum(params), finite


def _host(x):
    return np.asarray(x.addressable_data(0)) if hasattr(x, "addressable_data") else np.asarray(x)


def _params_of(state):
    return state.get("params") if isinstance(state, dict) else getattr(state, "params", None)


def integrity(state) -> tuple[bool, dict]:
    """(every float finite, {"state": checksum, "params": checksum of the params subtree})."""
    params = _params_of(state)
    total, params_total, finite = _integrity(state, params if params is not None else {})
    sums = {"state": int(_host(total))}
    if params is not None:
        sums["params"] = int(_host(params_total))
    return bool(_host(finite)), sums


def verify(saved: dict | None, tree, part: str):
    """Raises CorruptCheckpoint when `tree` (the `part` of a checkpoint) does not match the
    checksum saved with it; checkpoints written before checksums existed pass."""
    if not saved or part not in saved:
        return
    got = int(_host(_checksum(tree)))
    if got != int(saved[part]):
        raise CorruptCheckpoint(
            f"its {part} arrays do not match the checksum written when it was saved "
            f"({got:#010x} != {int(saved[part]):#010x}): a file was changed or damaged on disk"
        )


def identity(directory: str):
    """What a reader of the newest checkpoint in `directory` gets, independent of where the
    folder lives: {"step", "params" checksum}; the path itself for checkpoints without one."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        return directory
    ckpt = Checkpoints(directory, async_save=False, create=False)
    try:
        step = ckpt.latest_step()
        if step is None:
            return directory
        extras = ckpt.manager.restore(
            step, args=ocp.args.Composite(extras=ocp.args.JsonRestore()))["extras"] or {}
    except Exception:  # noqa: BLE001 - unreadable: the loader reports it; identify by path
        return directory
    finally:
        ckpt.close()
    sums = extras.get(INTEGRITY, {})
    return {"step": step, "params": sums["params"]} if "params" in sums else directory


# ---------------------------------------------------------------------- shapes


def abstract_like(tree, shardings):
    """ShapeDtypeStructs with shardings: the restore target for a state like `tree`."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _path_name(path) -> str:
    """A key path as names joined by "/" (e.g. opt_state/0/mu/w). Orbax's metadata tree holds
    dataclass and NamedTuple fields (TrainState, optax states) as dict keys, so attribute, dict
    and index keys must compare equal by name."""
    names = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                names.append(str(getattr(k, attr)))
                break
        else:
            names.append(str(k))
    return "/".join(names)


def check_compatible(saved_metadata, abstract_state, directory: str):
    """Raises a one-line error naming the first parameter whose saved shape differs."""
    saved = {_path_name(k): v for k, v in jax.tree_util.tree_flatten_with_path(saved_metadata)[0]}
    wanted = {_path_name(k): v for k, v in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    missing = sorted(set(wanted) - set(saved))
    if missing:
        raise ValueError(
            f"checkpoint {directory} does not match this model: it has no {missing[0]} "
            f"({len(missing)} entries missing) — resuming into a different model shape?"
        )
    for key, want in wanted.items():
        got_shape = tuple(getattr(saved[key], "shape", ()) or ())
        if got_shape != tuple(want.shape):
            raise ValueError(
                f"checkpoint {directory} does not match this model: {key} has shape "
                f"{got_shape} in the checkpoint but {tuple(want.shape)} in the config "
                "— resuming into a different model shape?"
            )


def load_params(directory: str, abstract_params, step: int | None = None):
    """Params only (e.g. SFT from a pretraining checkpoint) and the extras, at `step` or latest.

    Reads the "params" subtree of the saved TrainState (a partial restore: the optimizer state
    of the source run is never touched or needed). A finished run's newest step is its result,
    so a damaged one is an error here (no fallback to an older, different model).
    """
    directory = os.path.abspath(directory)  # orbax's metadata reader misses relative paths
    if not os.path.isdir(directory):  # checked here: the checkpoint manager would create it
        raise FileNotFoundError(f"no checkpoint folder {directory}")
    ckpt = Checkpoints(directory, async_save=False, create=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        ckpt.close()
        raise FileNotFoundError(f"no complete checkpoint in {directory}")
    try:
        params, extras = _read_params(ckpt, directory, step, abstract_params)
    except CorruptCheckpoint as e:
        raise CorruptCheckpoint(
            f"checkpoint step {step} in {directory} does not restore: {e}; rerun the run that "
            "wrote it (it resumes from its previous checkpoint)") from None
    finally:
        ckpt.close()
    return params, extras


def _read_params(ckpt, directory, step, abstract_params):
    try:
        extras = ckpt.manager.restore(
            step, args=ocp.args.Composite(extras=ocp.args.JsonRestore()))["extras"] or {}
        state_dir = os.path.join(directory, str(step), "state")
        with ocp.PyTreeCheckpointer() as reader:
            saved = reader.metadata(state_dir).item_metadata.tree
    except Exception as e:  # noqa: BLE001 - unreadable metadata is corruption
        raise CorruptCheckpoint(f"its metadata cannot be read ({_first_line(e)})") from None
    check_compatible(saved["params"], abstract_params, directory)
    target = {"params": abstract_params}
    try:
        with ocp.PyTreeCheckpointer() as reader:
            restored = reader.restore(
                state_dir,
                args=ocp.args.PyTreeRestore(
                    item=target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,
                ),
            )
    except Exception as e:  # noqa: BLE001 - a file that cannot be read is corruption
        raise CorruptCheckpoint(f"an array cannot be read ({_first_line(e)})") from None
    extras = dict(extras)
    verify(extras.pop(INTEGRITY, None), restored["params"], "params")
    return restored["params"], extras


def tree_equal(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )

"""Checkpoints: one orbax CheckpointManager (async) per run folder.

A checkpoint holds the TrainState (params, optimizer state, step, RNG), the data iterator
state and stage extras (KL controller, reward normalisation ...) as JSON. Orbax writes into a
temporary folder and renames it when complete, so an interrupted save never damages the last
good checkpoint. Restoring checks shapes first: resuming into a different model is a clear
error, not a stack trace from deep inside orbax.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "extras")


class Checkpoints:
    def __init__(self, directory: str, keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
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

    def save(self, step: int, state, data_state=None, extras=None, force: bool = False):
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state if data_state is not None else {}),
            extras=ocp.args.JsonSave(extras if extras is not None else {}),
        )
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state):
        """(state, data_state, extras) at `step`; `abstract_state` gives shapes and shardings."""
        saved = self.manager.item_metadata(step)["state"]
        if hasattr(abstract_state, "params"):  # optimizer trees need not be keyed like dicts
            check_compatible(saved["params"], abstract_state.params, self.directory)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                extras=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["data"], restored["extras"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


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
    of the source run is never touched or needed).
    """
    directory = os.path.abspath(directory)  # orbax's metadata reader misses relative paths
    ckpt = Checkpoints(directory, async_save=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        ckpt.close()
        raise FileNotFoundError(f"no complete checkpoint in {directory}")
    extras = ckpt.manager.restore(step, args=ocp.args.Composite(extras=ocp.args.JsonRestore()))
    ckpt.close()
    state_dir = os.path.join(directory, str(step), "state")
    with ocp.PyTreeCheckpointer() as reader:
        saved = reader.metadata(state_dir).item_metadata.tree
        check_compatible(saved["params"], abstract_params, directory)
        target = {"params": abstract_params}
        restored = reader.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,
            ),
        )
    return restored["params"], extras["extras"] or {}


def tree_equal(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )

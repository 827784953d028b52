"""Orbax checkpoints of a run, with separately restorable items and combined retention.

Layout (AlphaRL reads a run's trajectory, W₀ included, from it)::

  <run dir>/checkpoints/
    <step>/                  one directory per kept rollout step; step 0 = starting weights
      params/                the model parameters (the `nnx.State` of `nnx.Param`s),
                             restorable alone with `restore_params`: without a target as
                             nested dicts, e.g. ['layers']['0']['mlp']['up_proj']['kernel']
                             ['value'] (layer indices as strings, each array under 'value');
                             with `target=` an abstract `nnx.State` (from `nnx.split` of
                             `nnx.eval_shape(...)`), as that State (what `hf_matrices` takes)
      opt_state/             the optimizer state, including the update rule's (SFPO/GXPO
                             gate statistics, counters, diagnostics)
      rng/                   the run's PRNG key data (uint32 array)
      progress/              JSON: step, updates, data cursor and cumulative counters
      config/                JSON: the run's `TrainConfig.to_dict()`
      metrics/               JSON: the step's eval metrics (eval/greedy_acc), for best-N
      _CHECKPOINT_METADATA, commit_success.txt   written by orbax
    <step>.orbax-checkpoint-tmp-*/   an unfinished write; never read, removed on restart

Writes are atomic: orbax writes into the temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoints intact.

Retention keeps the union of (orbax preservation policies): the last N checkpoints, the
best K by held-out greedy accuracy, every step that is a multiple of k, and step 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

ITEMS = ('params', 'opt_state', 'rng', 'progress', 'config')
_ARRAY_ITEMS = ('params', 'opt_state', 'rng')
BEST_METRIC = 'eval/greedy_acc'


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class CheckpointStore:
  """A run's checkpoints: save every item of a step, restore any item alone."""

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    keep_last: int = 2,
    keep_best: int = 1,
    keep_every: int = 0,
    read_only: bool = False,
  ):
    """Opens (or creates) `<directory>`.

    Args:
      directory: the checkpoints directory (e.g. `<run dir>/checkpoints`).
      keep_last: the N most recent checkpoints kept.
      keep_best: checkpoints kept by highest `eval/greedy_acc` (0: none).
      keep_every: steps that are multiples of this are kept (0: none).
      read_only: open an existing run without writing (e.g. for analysis).
    """
    if keep_last < 1:
      raise ValueError(f'`keep_last` must be >= 1, got {keep_last}')
    self.directory = os.path.abspath(os.fspath(directory))
    policies: list[Any] = [ocm.LatestN(n=keep_last), ocm.CustomSteps(steps=[0])]
    if keep_best:
      policies.append(
        ocm.BestN(
          get_metric_fn=lambda m: m[BEST_METRIC],
          reverse=False,  # ascending, so the last n are the highest accuracies
          n=keep_best,
          keep_checkpoints_without_metrics=False,
        )
      )
    if keep_every:
      policies.append(ocm.EveryNSteps(interval_steps=keep_every))
    options = ocp.CheckpointManagerOptions(
      preservation_policy=ocm.AnyPreservationPolicy(policies),
      # best_fn only makes orbax persist each step's metrics, so best-N survives a restart.
      best_fn=lambda m: m[BEST_METRIC],
      best_mode='max',
      enable_async_checkpointing=False,  # a returned save is on disk (resume tests rely on it)
      cleanup_tmp_directories=not read_only,
      create=not read_only,
      read_only=read_only,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def save(
    self,
    step: int,
    *,
    params: Any,
    opt_state: Any,
    rng: jax.Array,
    progress: Mapping[str, Any],
    config: Mapping[str, Any],
    metrics: Mapping[str, float] | None = None,
  ) -> None:
    """Writes all items of `step` atomically (and applies retention).

    Args:
      step: the rollout step (0 = starting weights).
      params: a pytree of arrays (an nnx pure dict).
      opt_state: the optimizer state pytree.
      rng: a typed PRNG key or raw uint32 key data.
      progress: JSON-serialisable counters (data cursor, updates, cumulative counts).
      config: the run config as a JSON dict.
      metrics: e.g. {'eval/greedy_acc': 0.42}, used by best-N retention.
    """
    if jax.dtypes.issubdtype(getattr(rng, 'dtype', None), jax.dtypes.prng_key):
      rng = jax.random.key_data(rng)
    args = ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      opt_state=ocp.args.StandardSave(opt_state),
      rng=ocp.args.StandardSave({'key': rng}),
      progress=ocp.args.JsonSave(dict(progress)),
      config=ocp.args.JsonSave(dict(config)),
    )
    metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
    saved = self._manager.save(step, args=args, metrics=metrics, force=True)
    if not saved:
      raise RuntimeError(f'orbax refused to save step {step} in {self.directory}')
    self._manager.wait_until_finished()

  def steps(self) -> list[int]:
    """Kept steps, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def _check_step(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      raise FileNotFoundError(f'no checkpoint for step {step} in {self.directory}')
    return step

  def restore_item(self, name: str, *, step: int | None = None, target: Any = None) -> Any:
    """Restores one item of `step` (latest when None).

    Args:
      name: one of `ITEMS`.
      step: the step; None takes the latest.
      target: for array items, a pytree (arrays or ShapeDtypeStructs) giving the structure,
        dtypes and shardings to restore into; None restores plain nested dicts.
    """
    if name not in ITEMS:
      raise ValueError(f'unknown checkpoint item {name!r}; items are {ITEMS}')
    step = self._check_step(step)
    if name in _ARRAY_ITEMS:
      if name == 'rng' and target is not None:
        target = {'key': target}
      restore = ocp.args.StandardRestore(None if target is None else _abstract(target))
    else:
      restore = ocp.args.JsonRestore()
    out = self._manager.restore(step, args=ocp.args.Composite(**{name: restore}))[name]
    if name == 'rng':
      out = out['key']
    return out

  def restore_params(self, *, step: int | None = None, target: Any = None) -> Any:
    """The params of `step` alone (what AlphaRL and the SFT warm start read)."""
    return self.restore_item('params', step=step, target=target)

  def restore(
    self, *, step: int | None = None, params: Any, opt_state: Any, rng: Any
  ) -> dict[str, Any]:
    """Restores every item of `step` into the structures of the given targets."""
    step = self._check_step(step)
    args = ocp.args.Composite(
      params=ocp.args.StandardRestore(_abstract(params)),
      opt_state=ocp.args.StandardRestore(_abstract(opt_state)),
      rng=ocp.args.StandardRestore(_abstract({'key': rng})),
      progress=ocp.args.JsonRestore(),
      config=ocp.args.JsonRestore(),
    )
    out = dict(self._manager.restore(step, args=args))
    out['rng'] = out['rng']['key']
    out['step'] = step
    return out

  def metrics(self, step: int) -> dict[str, float] | None:
    """The metrics saved with `step` (None when none were given)."""
    step = self._check_step(step)
    metrics = self._manager.metrics(step)
    return None if metrics is None else dict(metrics)

  def close(self) -> None:
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def to_numpy(tree: Any) -> Any:
  """Host copies of a pytree of arrays (for bitwise comparisons)."""
  return jax.tree.map(np.asarray, tree)

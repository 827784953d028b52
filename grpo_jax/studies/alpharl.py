"""AlphaRL on a trainer run: rank-1 dominance, linearity and extrapolation (PAPERS.md §4).

The study reads a GRPO run that kept every k-th checkpoint (step 0 = the SFT-warmed W_0)
and evaluated the held-out greedy accuracy at each, then builds three tables:

  rank-k dominance   accuracy of W_0 + alpha (||dW|| / ||dW^(k)||) dW^(k), k = 1, 2, 4, full,
                     and the % of the RL gain (acc_T - acc_0) each recovers;
  linearity          the distribution over matrices of the R^2 of a_t = sigma1 u1 linear in
                     time (and of the AlphaRL code's PLS-on-accuracy R^2);
  extrapolation      the model predicted at the last step from the first 20 / 30 / 40 % of
                     steps by the time fit, PLS and RELEX: accuracy, % retained of the final
                     accuracy, % of the gain, and the implied speedup T / t_w.

Each table prints the paper's number beside ours (`PAPER`, PAPERS.md §4; "n/a" where the
paper gives none). The checkpoints are streamed by `RunCheckpoints`, one at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from grpo_jax import metrics as metrics_lib
from grpo_jax import rank1
from grpo_jax.studies import common

PyTree = Any

# PAPERS.md §4 [paper] claims, quoted; every other cell of the tables prints "n/a".
PAPER_RANK1_GAIN = '> 99 %'  # rank-1 recovers > 99% of the reasoning gain
PAPER_RETAINED = '>= 96 %'  # extrapolation keeps >= 96% of the performance ...
PAPER_SPEEDUP = 'up to 2.5x (2.0x mean)'  # ... at up to 2.5x (2.0x mean) speedup
PAPER_RELEX = '15 % of steps suffice'  # RELEX (arXiv 2605.21468)

FRACTIONS = (0.2, 0.3, 0.4)
RANKS = (1, 2, 4, None)  # None: full rank
FITS = ('time', 'pls', 'relex')


# --------------------------------------------------------------------------------------
# Run configuration.
# --------------------------------------------------------------------------------------


def study_config(
  *, preset: str = 'cpu-tiny', every: int = 20, overrides: Sequence[str] = ()
) -> Any:
  """The trainer config of an AlphaRL run: `preset` keeping and evaluating every k-th step.

  Every checkpoint step (a multiple of `every`, and the last) is kept for good and
  evaluated; SFT stays as the preset has it (on for 'cpu-tiny': W_0 is the warmed model).

  Args:
    preset: a `grpo_jax.config.CONFIG_PRESETS` name.
    every: k, rollout steps between kept checkpoints.
    overrides: further `section.field=value` overrides (applied last).
  """
  from grpo_jax import config as config_lib

  if every < 1:
    raise ValueError(f'`every` must be >= 1, got {every}')
  base = config_lib.config_preset(preset)
  keep = [
    f'checkpoint.every={every}',
    f'checkpoint.keep_every={every}',
    'checkpoint.keep_best=0',
    # The last step is checkpointed even when not a multiple of k; keeping the last N
    # for a large N keeps it (and nothing else is ever pruned).
    f'checkpoint.keep_last={max(base.steps // every + 2, 2)}',
    f'eval.every={every}',
    'output_dir=runs/alpharl' if preset == 'cpu-tiny' else f'output_dir=runs/alpharl-{preset}',
  ]
  cfg = config_lib.apply_overrides(base, keep)
  return config_lib.apply_overrides(cfg, list(overrides))


QUICK = (
  'sft.enabled=false',
  *common.SMOKE_OVERRIDES,  # the weights move within 10 steps
  'batch.group_size=4',
  'eval.avg_k=0',
  'steps=10',
)


def quick_config(output_dir: str, *extra: str) -> Any:
  """A smoke-size run (seconds on CPU): 10 steps, a checkpoint and an evaluation at each."""
  cfg = study_config(every=1, overrides=QUICK)
  from grpo_jax import config as config_lib

  return config_lib.apply_overrides(
    cfg, [f'output_dir={output_dir}', 'checkpoint.keep_last=12', *extra]
  )


# --------------------------------------------------------------------------------------
# Reading a run: the streamed trajectory and the evaluator.
# --------------------------------------------------------------------------------------


def checkpoints_dir(run_dir: str | os.PathLike) -> str:
  """`<run_dir>/checkpoints` (or `run_dir` itself when it is that directory)."""
  run_dir = os.path.abspath(os.fspath(run_dir))
  inner = os.path.join(run_dir, 'checkpoints')
  if os.path.isdir(inner):
    return inner
  if os.path.isfile(os.path.join(run_dir, '0', '_CHECKPOINT_METADATA')):
    return run_dir
  raise FileNotFoundError(f'{run_dir}: no trainer checkpoints (expected {inner}/<step>/)')


class _Checkpoints:
  """`(step, params)` pairs of kept steps, base model first: `steps`, `final_step`,
  `params(step)`, iteration and `len`. Subclasses set `steps` and define `params`."""

  steps: list[int]

  @property
  def final_step(self) -> int:
    return self.steps[-1]

  def params(self, step: int) -> PyTree:
    raise NotImplementedError

  def __iter__(self) -> Iterator[tuple[int, PyTree]]:
    for step in self.steps:
      yield step, self.params(step)

  def __len__(self) -> int:
    return len(self.steps)


class RunCheckpoints(_Checkpoints):
  """A trainer run's checkpoints as the `(step, params)` iterable `grpo_jax.rank1` streams.

  Each iteration opens the run read-only and restores the params item alone, one step at a
  time in increasing order (step 0, the starting weights W_0, first), so at most one
  checkpoint is alive in the iterator; it can be iterated again (e.g. one extrapolation per
  window). `checkpoint.py` offers restores by step; this is the sequence over them.

  Args:
    run_dir: the run directory (`<output_dir>`) or its `checkpoints/` directory.
    target: params (or ShapeDtypeStructs) giving the structure, dtypes and shardings to
      restore into, e.g. the trainer's `init_params` (an `nnx.State`); None restores plain
      nested dicts.
    steps: the steps to read (default: every kept step); must include 0.
    cache: keep the restored params on the host after the first read (small models only:
      the analysis re-reads each window several times).
  """

  def __init__(
    self,
    run_dir: str | os.PathLike,
    *,
    target: PyTree = None,
    steps: Sequence[int] | None = None,
    cache: bool = False,
  ):
    from grpo_jax.checkpoint import CheckpointStore

    self.directory = checkpoints_dir(run_dir)
    self.target = target
    self._store_cls = CheckpointStore
    with self._open() as store:
      kept = store.steps()
    if not kept or kept[0] != 0:
      raise ValueError(f'{self.directory}: no step-0 checkpoint (W_0); kept steps: {kept}')
    if steps is None:
      steps = kept
    missing = sorted(set(steps) - set(kept))
    if missing:
      raise ValueError(f'{self.directory}: steps {missing} are not kept (kept: {kept})')
    steps = sorted(int(s) for s in steps)
    if steps[0] != 0:
      raise ValueError(f'`steps` must include 0 (the base W_0), got {steps}')
    self.steps = steps
    self._cache: dict[int, PyTree] | None = {} if cache else None

  def _open(self):
    import logging

    # orbax warns on every read-only open that it will not save; silence only that.
    absl = logging.getLogger('absl')
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
      return self._store_cls(self.directory, read_only=True)
    finally:
      absl.setLevel(level)

  def params(self, step: int) -> PyTree:
    """The params of one kept step."""
    if step not in self.steps:
      raise ValueError(f'step {step} is not among the steps read: {self.steps}')
    if self._cache is not None and step in self._cache:
      return self._cache[step]
    with self._open() as store:
      out = store.restore_params(step=step, target=self.target)
    if self._cache is not None:
      self._cache[step] = out
    return out

  def __iter__(self) -> Iterator[tuple[int, PyTree]]:
    if self._cache is not None:
      yield from super().__iter__()
      return
    with self._open() as store:  # one open for the whole pass
      for step in self.steps:
        yield step, store.restore_params(step=step, target=self.target)


class MemoryCheckpoints(_Checkpoints):
  """In-memory `(step, params)` pairs with the `steps` / `params(step)` interface of the others."""

  def __init__(self, pairs: Mapping[int, PyTree]):
    if 0 not in pairs:
      raise ValueError(f'`pairs` needs step 0 (the base model), got steps {sorted(pairs)}')
    self._pairs = dict(sorted(pairs.items()))
    self.steps = list(self._pairs)

  def params(self, step: int) -> PyTree:
    return self._pairs[step]


class HFCheckpoints(_Checkpoints):
  """Local Hugging Face checkpoint directories as a `(step, params)` iterable (`paper` preset).

  Each directory is loaded as the trainer loads `model.path` (float32 parameters, the
  checkpoint's compute dtype), so its params fit the trainer's graph and evaluation.

  Args:
    paths: step -> directory (safetensors + config.json); step 0 must be the base model.
  """

  def __init__(self, paths: Mapping[int, str]):
    if 0 not in paths:
      raise ValueError(f'`paths` needs step 0 (the base model), got steps {sorted(paths)}')
    for step, path in paths.items():
      if not os.path.isfile(os.path.join(path, 'config.json')):
        raise FileNotFoundError(f'checkpoint of step {step}: {path} has no config.json')
    self.paths = dict(sorted(paths.items()))
    self.steps = list(self.paths)

  def params(self, step: int) -> PyTree:
    from flax import nnx

    from grpo_jax.models import load_hf

    model, _ = load_hf(self.paths[step], param_dtype='float32')
    return nnx.split(model, nnx.Param)[1]


def hf_view(model_cfg) -> rank1.MatrixView:
  """The models' HF `[out, in]` view bound to a config (PAPERS.md §4 conventions)."""
  from grpo_jax.models import hf_matrices, with_hf_matrices

  return rank1.MatrixView(
    functools.partial(hf_matrices, model_cfg), functools.partial(with_hf_matrices, model_cfg)
  )


def run_config(run_dir: str | os.PathLike) -> Any:
  """The `TrainConfig` saved with a run's latest checkpoint."""
  from grpo_jax.config import TrainConfig

  reader = RunCheckpoints(run_dir)
  with reader._open() as store:
    return TrainConfig.from_dict(store.restore_item('config', step=reader.final_step))


def eval_accuracies(run_dir: str | os.PathLike) -> dict[int, float]:
  """Held-out greedy accuracy the trainer logged at each step (its metrics.jsonl)."""
  rows = metrics_lib.read_metrics(run_dir, kind='eval')
  return {int(r['step']): float(r['eval/greedy_acc']) for r in rows if 'eval/greedy_acc' in r}


@dataclasses.dataclass
class Evaluator:
  """Held-out greedy accuracy of a params pytree, by the trainer's own evaluation."""

  trainer: Any
  size: int

  @classmethod
  def for_config(cls, cfg, *, size: int | None = None, trainer=None) -> Evaluator:
    from grpo_jax.train import Trainer

    trainer = trainer or Trainer(cfg, progress=False, log=lambda *_: None)
    return cls(trainer, size or cfg.eval.size)

  def __call__(self, params) -> float:
    return float(self.trainer.evaluate(params, step=0, size=self.size, avg_k=0)['eval/greedy_acc'])


# --------------------------------------------------------------------------------------
# The analysis.
# --------------------------------------------------------------------------------------


def gain_pct(acc: float | None, acc0: float, acc_t: float) -> float:
  """% of the RL gain recovered: 100 (acc - acc_0) / (acc_T - acc_0); NaN without a gain."""
  if acc is None or acc_t == acc0:
    return float('nan')
  return 100.0 * (acc - acc0) / (acc_t - acc0)


def retained_pct(acc: float | None, acc_t: float) -> float:
  """% of the final accuracy kept (the paper's ">= 96 % of the performance")."""
  if acc is None or not acc_t > 0:
    return float('nan')
  return 100.0 * acc / acc_t


def window_for(steps: Sequence[int], fraction: float) -> tuple[int, int]:
  """The window ending at `fraction` of the final step, as `(last_step, n)`.

  `last_step` is the last checkpoint at or before `fraction * final` (0 when none) and `n`
  the number of checkpoints after the base up to it: the window handed to
  `rank1.extrapolate` is a step, never a percentage left to rounding (PAPERS.md §4).
  """
  if not 0 < fraction < 1:
    raise ValueError(f'a window fraction must lie in (0, 1), got {fraction}')
  final = steps[-1]
  inside = [s for s in steps[1:] if s <= fraction * final + 1e-9]
  return (inside[-1] if inside else 0), len(inside)


def max_abs_diff(a: PyTree, b: PyTree) -> float:
  """max |a - b| over every leaf of two params pytrees of the same structure."""
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
  return max(jax.tree.leaves(diffs), default=0.0)


def _summary(values: Sequence[float]) -> dict[str, float]:
  v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
  if v.size == 0:
    return {k: float('nan') for k in ('min', 'q25', 'median', 'q75', 'max', 'mean')} | {'n': 0}
  q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
  return dict(zip(('min', 'q25', 'median', 'q75', 'max'), q.tolist())) | {
    'mean': float(v.mean()),
    'n': int(v.size),
  }


def analyze(
  checkpoints,
  *,
  evaluate: Callable[[PyTree], float],
  view: rank1.MatrixView,
  accuracies: Mapping[int, float] | None = None,
  ranks: Sequence[int | None] = RANKS,
  fractions: Sequence[float] = FRACTIONS,
  fits: Sequence[str] = FITS,
  residuals: Sequence[bool] = (False, True),
  method: str = 'power',
  dw_path: str | None = None,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Runs the three AlphaRL measurements on a checkpoint sequence.

  Args:
    checkpoints: a re-iterable `(step, params)` sequence with `.steps` and `.params(step)`
      (`RunCheckpoints` or `HFCheckpoints`), the base first.
    evaluate: params -> held-out greedy accuracy.
    view: how matrices are read (`hf_view(model_cfg)`).
    accuracies: step -> accuracy already measured (the run's evaluations); missing steps
      are evaluated here. PLS and the accuracy curve use them.
    ranks: k of the rank-k models (None: full rank).
    fractions: window ends as fractions of the final step.
    fits: extrapolation fits ('time', 'pls', 'relex').
    residuals: add the window's residual to the prediction (False, True or both).
    method: top-1 SVD of the trajectory and energies: 'power' (power iteration, fast on
      CPU too) or 'svd' (`jnp.linalg.svd`).
    dw_path: if given, the final update dW = W_T - W_0 of every matrix is saved there as
      .npz (for `bench/svd.py --dw`).
    log: progress lines.

  Returns:
    A JSON-ready dict of every table, the invariants and the trajectory summaries.
  """
  t_start = time.perf_counter()
  steps = list(checkpoints.steps)
  if len(steps) < 3:
    raise ValueError(f'too few checkpoints: need W_0 and >= 2 more, got steps {steps}')
  final = steps[-1]
  params0, params_t = checkpoints.params(0), checkpoints.params(final)
  acc = dict(accuracies or {})
  for s in steps:
    if s not in acc:
      acc[s] = evaluate(checkpoints.params(s))
  # Base and final are re-evaluated here so every model of the tables is measured alike.
  acc0, acc_t = evaluate(params0), evaluate(params_t)
  log(f'held-out greedy accuracy: W_0 {acc0:.4f}, W_{final} {acc_t:.4f}')

  if dw_path:
    dws = rank1.deltas(params0, params_t, view=view)
    os.makedirs(os.path.dirname(os.path.abspath(dw_path)), exist_ok=True)
    np.savez(dw_path, **{n.replace('.', '_'): np.asarray(d) for n, d in dws.items()})
    del dws

  # Rank-k dominance. Tensors outside the attention/MLP matrices (embeddings, norms) come
  # from the final model ('final': the full-rank model is then W_T exactly) or stay at W_0
  # ('base', the AlphaRL code's convention); k = 0 keeps the matrices at W_0.
  rank_rows = []
  for others in ('final', 'base'):
    for k in (0, *ranks):
      if k == 0:
        m0 = rank1.select_matrices(params0, view=view)
        model = view.unview(params_t if others == 'final' else params0, m0)
      else:
        model = rank1.rank_k_model(params0, params_t, k=k, view=view, others=others)
      a = evaluate(model)
      row = {'k': 'full' if k is None else k, 'others': others, 'acc': a}
      row['gain_pct'] = gain_pct(a, acc0, acc_t)
      if k is None and others == 'final':
        row['max_abs_diff_vs_final'] = max_abs_diff(model, params_t)
      rank_rows.append(row)
      del model
  log('rank-k models evaluated')

  # Trajectory and linearity over every checkpoint.
  traj = rank1.collect_trajectory(checkpoints, view=view, method=method)
  time_r2 = traj.linearity_r2()
  acc_traj = [acc[int(s)] for s in traj.steps]
  try:
    pls_r2 = traj.pls_r2(acc_traj)
  except ValueError as e:  # constant accuracy: PLS is undefined
    pls_r2 = {n: float('nan') for n in traj.names}
    log(f'PLS R^2 undefined: {e}')
  linearity = {
    'time_r2': time_r2,
    'pls_r2': pls_r2,
    'time_r2_summary': _summary(list(time_r2.values())),
    'pls_r2_summary': _summary(list(pls_r2.values())),
  }
  trajectory = {
    'steps': traj.steps.tolist(),
    'sigma': {n: traj.sigma[n].tolist() for n in traj.names},
    'energy': {n: traj.energy[n].tolist() for n in traj.names},
    'a_norm': {n: np.linalg.norm(traj.a[n], axis=1).tolist() for n in traj.names},
    'flips': {n: int(traj.flipped[n].sum()) for n in traj.names},
    'converged': bool(all(traj.converged[n].all() for n in traj.names)),
  }
  # sigma1^2 / ||dW||^2 of the final update: the trajectory's last point.
  energy = {n: float(traj.energy[n][-1]) for n in traj.names}
  del traj

  # Extrapolation to the final step from early windows.
  extra_rows = []
  for fraction in fractions:
    last_step, n = window_for(steps, fraction)
    for fit in fits:
      for residual in residuals:
        row = {
          'fraction': fraction,
          'last_step': last_step,
          'window': n,
          'fit': fit,
          'residual': residual,
          'speedup': final / last_step if last_step else float('nan'),
        }
        if n < 2:
          row |= {'acc': None, 'error': f'{n} checkpoint(s) in the window; a line needs 2'}
        else:
          try:
            model, info = rank1.extrapolate(
              checkpoints,
              target_step=final,
              last_step=last_step,
              fit=fit,
              residual=residual,
              accuracies=acc if fit == 'pls' else None,
              view=view,
              method=method,
            )
            row['acc'] = evaluate(model)
            row['window_r2_median'] = _summary(list(info['r2'].values()))['median']
            del model
          except ValueError as e:  # e.g. PLS on a constant accuracy
            row |= {'acc': None, 'error': str(e)}
        row['retained_pct'] = retained_pct(row['acc'], acc_t)
        row['gain_pct'] = gain_pct(row['acc'], acc0, acc_t)
        extra_rows.append(row)
  log('extrapolations evaluated')

  # Invariant: a window covering every checkpoint (target = its last step, residual on)
  # gives W_w + (a_hat(T) - a_T) v_T^T; with two checkpoints the line is exact and the
  # final weights come back (`window_all_two` below), with more it differs by the fit's
  # residual at T.
  window_all, _ = rank1.extrapolate(
    checkpoints, target_step=final, last_step=final, residual=True, view=view, method=method
  )
  two = MemoryCheckpoints({s: checkpoints.params(s) for s in (0, steps[-2], final)})
  window_two, _ = rank1.extrapolate(
    two, target_step=final, window=2, residual=True, view=view, method=method
  )
  invariants = {
    'full_rank_max_abs_diff': next(
      r['max_abs_diff_vs_final'] for r in rank_rows if r['k'] == 'full' and r['others'] == 'final'
    ),
    'full_rank_acc': next(
      r['acc'] for r in rank_rows if r['k'] == 'full' and r['others'] == 'final'
    ),
    'final_acc': acc_t,
    'window_all_max_abs_diff': max_abs_diff(window_all, params_t),
    'window_all_two_max_abs_diff': max_abs_diff(window_two, params_t),
    'final_update_max_abs': max(
      float(np.max(np.abs(np.asarray(d))))
      for d in rank1.deltas(params0, params_t, view=view).values()
    ),
  }
  return {
    'steps': steps,
    'final_step': final,
    'method': method,
    'acc': {'base': acc0, 'final': acc_t, 'checkpoints': {int(s): acc[s] for s in steps}},
    'rank_k': rank_rows,
    'energy': energy,
    'energy_summary': _summary(list(energy.values())),
    'linearity': linearity,
    'trajectory': trajectory,
    'extrapolation': extra_rows,
    'invariants': invariants,
    'paper': {
      'rank1_gain': PAPER_RANK1_GAIN,
      'retained': PAPER_RETAINED,
      'speedup': PAPER_SPEEDUP,
      'relex': PAPER_RELEX,
    },
    'analysis_time_s': time.perf_counter() - t_start,
  }


# --------------------------------------------------------------------------------------
# Tables and figures.
# --------------------------------------------------------------------------------------


def _pct(x) -> str:
  return common.fmt_num(x, digits=1)


def rank_table(results: Mapping[str, Any]) -> str:
  """Rank-k dominance: accuracy and % of the RL gain, unselected tensors final or W_0."""
  by = {(r['k'], r['others']): r for r in results['rank_k']}
  ks = [r['k'] for r in results['rank_k'] if r['others'] == 'final']
  rows, paper = [], {}
  for k in ks:
    label = 'W_0 matrices (k=0)' if k == 0 else f'rank-{k}' if k != 'full' else 'full rank'
    f, b = by[(k, 'final')], by[(k, 'base')]
    rows.append(
      (
        label,
        [common.fmt_num(f['acc'], digits=4), _pct(f['gain_pct']),
         common.fmt_num(b['acc'], digits=4), _pct(b['gain_pct'])],
      )
    )  # fmt: skip
    if k == 1:
      paper[label] = [None, PAPER_RANK1_GAIN, None, PAPER_RANK1_GAIN]
  acc = results['acc']
  return common.format_table(
    f'Rank-1 dominance (PAPERS.md §4): W_0 + (||dW|| / ||dW^(k)||) dW^(k) per matrix, '
    f'step {results["final_step"]}',
    ['acc (others=final)', '% gain', 'acc (others=W_0)', '% gain'],
    rows,
    paper=paper,
    notes=[
      f'acc W_0 = {acc["base"]:.4f}, acc final = {acc["final"]:.4f}; % gain = 100 (acc - '
      'acc_0) / (acc_T - acc_0).',
      'others: embeddings and norms from the final model or kept at W_0 (the AlphaRL code).',
      f'energy sigma1^2/||dW||^2 over matrices: median '
      f'{results["energy_summary"]["median"]:.3f} (min {results["energy_summary"]["min"]:.3f}).',
    ],
  )


def linearity_table(results: Mapping[str, Any]) -> str:
  """Distribution over matrices of the linearity R^2 (time fit and PLS on accuracy)."""
  lin = results['linearity']
  cols = ['min', 'q25', 'median', 'q75', 'max', 'mean']
  rows = [
    (
      'R^2 a_t ~ a_0 + t a_dot',
      [common.fmt_num(lin['time_r2_summary'][c], digits=3) for c in cols],
    ),
    ('R^2 acc ~ PLS1(a_t)', [common.fmt_num(lin['pls_r2_summary'][c], digits=3) for c in cols]),
  ]
  return common.format_table(
    f'Rank-1 linear dynamics (PAPERS.md §4): R^2 over {lin["time_r2_summary"]["n"]} matrices, '
    f'{len(results["steps"]) - 1} checkpoints',
    cols,
    rows,
    paper={},
    notes=['The paper reports linearity as figures, no number: every paper cell is n/a.'],
  )


def extrapolation_table(results: Mapping[str, Any]) -> str:
  """Extrapolated-model accuracy per window and fit, % retained, % gain, speedup."""
  rows, paper = [], {}
  for r in results['extrapolation']:
    label = (
      f'{100 * r["fraction"]:.0f}% (t_w={r["last_step"]}, n={r["window"]}) {r["fit"]}'
      f'{" +res" if r["residual"] else ""}'
    )
    rows.append(
      (
        label,
        [common.fmt_num(r['acc'], digits=4), _pct(r['retained_pct']), _pct(r['gain_pct']),
         common.fmt_num(r['speedup'], digits=2, suffix='x')],
      )
    )  # fmt: skip
    if r['fit'] == 'relex':
      paper[label] = [None, None, None, PAPER_RELEX]
    else:
      paper[label] = [None, PAPER_RETAINED, None, PAPER_SPEEDUP]
  return common.format_table(
    f'Extrapolation to step {results["final_step"]} from early windows (PAPERS.md §4); '
    f'final acc {results["acc"]["final"]:.4f}',
    ['acc', '% retained', '% gain', 'speedup T/t_w'],
    rows,
    paper=paper,
    notes=[
      'time: a_t ~ a_0 + t a_dot; pls: the AlphaRL code (PLS on accuracy); relex: Gram rank-1.',
      '+res adds the window residual dW_w - (rank-1 part); predictions are added to W_0.',
      '% retained = 100 acc / acc_final (the paper keeps >= 96 % at its speedups).',
    ],
  )


def format_tables(results: Mapping[str, Any]) -> str:
  return '\n\n'.join([rank_table(results), linearity_table(results), extrapolation_table(results)])


def save_figures(results: Mapping[str, Any], out_dir: str | os.PathLike) -> list[str]:
  """Rank-k accuracy, R^2 histogram, extrapolation accuracy and the trajectory; returns paths."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  acc = results['acc']
  paths = []

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  ax = axes[0]
  for i, others in enumerate(('final', 'base')):
    rows = [r for r in results['rank_k'] if r['others'] == others]
    x = np.arange(len(rows)) + 0.4 * i
    ax.bar(x, [r['acc'] for r in rows], width=0.4, label=f'others={others}')
  ax.set_xticks(np.arange(len(rows)) + 0.2, [str(r['k']) for r in rows])
  ax.axhline(acc['base'], color='gray', ls=':', label='W_0')
  ax.axhline(acc['final'], color='k', ls='--', label='final')
  ax.set(xlabel='rank k', ylabel='held-out greedy accuracy', title='rank-k models')
  ax.legend(fontsize=8)

  ax = axes[1]
  lin = results['linearity']
  for key, label in (('time_r2', 'a_t linear in t'), ('pls_r2', 'acc ~ PLS(a_t)')):
    vals = [v for v in lin[key].values() if v is not None and math.isfinite(v)]
    if vals:
      ax.hist(vals, bins=20, range=(min(0.0, min(vals)), 1.0), alpha=0.6, label=label)
  ax.set(xlabel='R^2 per matrix', ylabel='matrices', title='linearity')
  ax.legend(fontsize=8)

  ax = axes[2]
  for fit in sorted({r['fit'] for r in results['extrapolation']}):
    for residual in (False, True):
      rows = [
        r
        for r in results['extrapolation']
        if r['fit'] == fit and r['residual'] == residual and r['acc'] is not None
      ]
      if rows:
        ax.plot(
          [100 * r['fraction'] for r in rows],
          [r['acc'] for r in rows],
          marker='o',
          ls='-' if not residual else '--',
          label=f'{fit}{" +res" if residual else ""}',
        )
  ckpt = sorted((int(s), a) for s, a in acc['checkpoints'].items())
  ax.plot(
    [100 * s / results['final_step'] for s, _ in ckpt], [a for _, a in ckpt], 'k:', label='run'
  )
  ax.axhline(acc['final'], color='k', ls='--', lw=0.8)
  ax.set(xlabel='window end (% of steps)', ylabel='accuracy at the final step', title='extrap.')
  ax.legend(fontsize=7)
  fig.tight_layout()
  paths.append(os.path.join(out_dir, 'alpharl_tables.png'))
  fig.savefig(paths[-1], dpi=100)
  plt.close(fig)

  fig, (ax_e, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
  traj = results['trajectory']
  for name in traj['energy']:
    ax_e.plot(traj['steps'], traj['energy'][name], lw=0.8)
    ax_a.plot(traj['steps'], traj['a_norm'][name], lw=0.8)
  ax_e.set(xlabel='step', ylabel='sigma1^2 / ||dW||^2', title='rank-1 energy per matrix')
  ax_a.set(xlabel='step', ylabel='||a_t|| = sigma1', title='trajectory norm per matrix')
  fig.tight_layout()
  paths.append(os.path.join(out_dir, 'alpharl_trajectory.png'))
  fig.savefig(paths[-1], dpi=100)
  plt.close(fig)
  return paths


# --------------------------------------------------------------------------------------
# End to end.
# --------------------------------------------------------------------------------------


def run(
  cfg=None,
  *,
  run_dir: str | None = None,
  out_dir: str | None = None,
  hf_paths: Mapping[int, str] | None = None,
  train: bool = True,
  trainer=None,
  cache: bool | None = None,
  dump_dw: bool = True,
  log: Callable[[str], None] = print,
  **analyze_kwargs,
) -> dict[str, Any]:
  """Trains `cfg` (unless its run exists), analyses it, prints the tables, writes JSON/figures.

  Args:
    cfg: the run's `TrainConfig` (e.g. `study_config()`); None reads it from `run_dir`.
    run_dir: an existing run to analyse (default: `cfg.output_dir`).
    out_dir: where alpharl.json and the figures go (default: `<run_dir>/alpharl`).
    hf_paths: step -> local HF checkpoint directory, instead of the run's Orbax checkpoints
      (a user's checkpoints; `cfg` gives the task and evaluation).
    train: train (or resume) `cfg` first; False only analyses.
    trainer: a `grpo_jax.train.Trainer` for `cfg` to reuse (it evaluates the models).
    cache: hold the restored params in memory (default: when the model is small).
    dump_dw: save the final dW of every matrix as `<out_dir>/dw_final.npz`.
    log: where the tables and progress go.
    **analyze_kwargs: passed to `analyze`.

  Returns:
    The results dict (also written to `<out_dir>/alpharl.json`).
  """
  from grpo_jax.train import Trainer

  t0 = time.perf_counter()
  if cfg is None:
    if run_dir is None:
      raise ValueError('give `cfg` or `run_dir`')
    cfg = run_config(run_dir)
  run_dir = os.path.abspath(run_dir or cfg.output_dir)
  if run_dir != os.path.abspath(cfg.output_dir):
    cfg = dataclasses.replace(cfg, output_dir=run_dir)
  trainer = trainer or Trainer(cfg, progress=False, log=log)
  summary = None
  if train and hf_paths is None:
    summary = trainer.run()
  train_s = time.perf_counter() - t0
  evaluate = Evaluator.for_config(cfg, trainer=trainer)
  view = hf_view(trainer.model_cfg)
  if hf_paths is not None:
    checkpoints = HFCheckpoints(hf_paths)
    accuracies = None
  else:
    if cache is None:
      n_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainer.init_params))
      cache = n_bytes * len(RunCheckpoints(run_dir).steps) <= 512 * 2**20
    checkpoints = RunCheckpoints(run_dir, target=trainer.init_params, cache=cache)
    accuracies = {s: a for s, a in eval_accuracies(run_dir).items() if s in checkpoints.steps}
  out_dir = os.fspath(out_dir or os.path.join(run_dir, 'alpharl'))
  results = analyze(
    checkpoints,
    evaluate=evaluate,
    view=view,
    accuracies=accuracies,
    dw_path=os.path.join(out_dir, 'dw_final.npz') if dump_dw else None,
    log=log,
    **analyze_kwargs,
  )
  results |= {
    'run_dir': run_dir,
    'config': cfg.to_dict(),
    'train_summary': summary,
    'train_time_s': train_s,
    'eval_size': evaluate.size,
  }
  log(format_tables(results))
  results['figures'] = save_figures(results, out_dir)
  results['json'] = common.write_json(os.path.join(out_dir, 'alpharl.json'), results)
  log(f'wrote {results["json"]} and {", ".join(results["figures"])}')
  return results

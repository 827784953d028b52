"""Run metrics: the fixed key table, a JSONL + TensorBoard writer, a reader, a figure.

The keys are the contract between the trainer and the experiments (the GXPO tables, the
AlphaRL trajectories, the dynamics diagnostics). They are listed once, here, in
`METRIC_KEYS`; `MetricsWriter` refuses any other key.

=====================================  ============================================================
key                                    meaning
=====================================  ============================================================
``step``, ``updates``                  rollout steps and optimizer (outer) updates so far
``train/reward_mean``, ``_std``        the batch's total reward: mean and std over completions
``train/reward/<fn>``                  mean reward of one reward function (unweighted)
``train/zero_std_frac``                fraction of groups whose rewards are all equal
``train/entropy``                      mean token entropy of the sampled completions
``train/kl``                           KL to the reference policy (0 when the anchor is off)
``train/clip_frac``                    fraction of tokens whose ratio was clipped
``train/ratio_mean``, ``_max``         importance ratio π_θ/π_old over the batch's tokens
``train/len_mean``                     mean completion length in tokens
``train/truncated_frac``               fraction of completions cut at max_new_tokens
``train/extra_rollouts``               extra rollout rounds drawn by dynamic sampling
``train/old_logp_mismatch``            mean |sampler log-prob − training log-prob| (recompute)
``opt/grad_norm``                      global norm of the raw gradient, before clipping
``opt/update_norm``                    global norm of the applied parameter update
``opt/lr``                             learning rate of the inner optimizer
``rule/<name>``                        the update rule's own diagnostics, read from its state
``cum/backward_passes``                backward passes (full-batch gradient evaluations) so far
``cum/samples``, ``cum/tokens``        completions and completion tokens generated so far
``cum/time_s``                         wall-clock seconds of training so far
``time/rollout_s``, ``time/update_s``  per step
``time/tokens_per_s``                  completion tokens per second of this step
``eval/greedy_acc``                    held-out greedy accuracy (row of its own, with ``step``)
``eval/avg_at_k``                      held-out mean accuracy of k samples per prompt (same row)
``sft/loss``, ``sft/greedy_acc``       SFT warm-start rows (``sft/step`` is their step)
=====================================  ============================================================

Train rows are written once per rollout step. After a resume, steps that were logged but
never checkpointed are logged again, so `read_metrics` keeps the last row for each step
(train and eval rows separately).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

METRIC_KEYS: dict[str, str] = {
  'step': 'rollout steps so far',
  'updates': 'optimizer (outer) updates so far',
  'train/reward_mean': 'mean total reward of the batch',
  'train/reward_std': 'std of the total reward over the batch',
  'train/reward/<fn>': 'mean reward of one reward function',
  'train/zero_std_frac': 'fraction of groups whose rewards are all equal',
  'train/entropy': 'mean token entropy of the sampled completions',
  'train/kl': 'KL to the reference policy (0 when the anchor is off)',
  'train/clip_frac': 'fraction of clipped tokens',
  'train/ratio_mean': 'mean importance ratio',
  'train/ratio_max': 'max importance ratio',
  'train/len_mean': 'mean completion length (tokens)',
  'train/truncated_frac': 'fraction of completions cut at max_new_tokens',
  'train/extra_rollouts': 'extra rollout rounds drawn by dynamic sampling',
  'train/old_logp_mismatch': 'mean |sampler log-prob - training log-prob|',
  'opt/grad_norm': 'global norm of the raw gradient, before clipping',
  'opt/update_norm': 'global norm of the applied update',
  'opt/lr': 'learning rate of the inner optimizer',
  'rule/<name>': "the update rule's diagnostics, read from its state",
  'cum/backward_passes': 'backward passes so far',
  'cum/samples': 'completions generated so far',
  'cum/tokens': 'completion tokens generated so far',
  'cum/time_s': 'wall-clock seconds of training so far',
  'time/rollout_s': 'rollout seconds of this step',
  'time/update_s': 'update seconds of this step',
  'time/tokens_per_s': 'completion tokens per second of this step',
  'eval/greedy_acc': 'held-out greedy accuracy',
  'eval/avg_at_k': 'held-out mean accuracy over k samples per prompt',
  'sft/step': 'SFT step',
  'sft/loss': 'SFT teacher-forced loss (mean per answer token)',
  'sft/greedy_acc': 'held-out greedy accuracy during SFT',
}

_PREFIX_KEYS = ('train/reward/', 'rule/')
EVAL_KEYS = ('eval/greedy_acc', 'eval/avg_at_k')


def check_key(key: str) -> None:
  """Raises if `key` is not in the documented table."""
  if key in METRIC_KEYS and '<' not in key:
    return
  if any(key.startswith(p) and len(key) > len(p) for p in _PREFIX_KEYS):
    return
  raise KeyError(f'metric key {key!r} is not in grpo_jax.metrics.METRIC_KEYS')


def row_kind(row: Mapping[str, Any]) -> str:
  """'sft', 'eval' or 'train'."""
  if 'sft/step' in row:
    return 'sft'
  if any(k in row for k in EVAL_KEYS):
    return 'eval'
  return 'train'


def _scalar(value: Any) -> float | int:
  value = np.asarray(value)
  if value.shape != ():
    raise ValueError(f'metric values must be scalars, got shape {value.shape}')
  if np.issubdtype(value.dtype, np.integer) or value.dtype == bool:
    return int(value)
  return float(value)


class MetricsWriter:
  """Appends rows to `<dir>/metrics.jsonl` and TensorBoard event files.

  Each row is flushed as soon as it is written, so a killed run loses no logged row.
  """

  def __init__(self, directory: str | os.PathLike, *, tensorboard: bool = True):
    self.directory = os.fspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    self.path = os.path.join(self.directory, 'metrics.jsonl')
    self._file = open(self.path, 'a', encoding='utf-8')  # noqa: SIM115
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(self.directory, 'tb'), flush_secs=30)

  def write(self, row: Mapping[str, Any]) -> dict[str, Any]:
    """Writes one row; needs 'step' (or 'sft/step'); every key must be documented."""
    if 'step' not in row and 'sft/step' not in row:
      raise ValueError(f'a metrics row needs a `step`, got keys {sorted(row)}')
    clean = {}
    for key, value in row.items():
      check_key(key)
      clean[key] = _scalar(value)
    self._file.write(json.dumps(clean, allow_nan=True) + '\n')
    self._file.flush()
    if self._tb is not None:
      step = clean['sft/step'] if 'sft/step' in clean else clean['step']
      for key, value in clean.items():
        if key not in ('step', 'sft/step') and math.isfinite(value):
          self._tb.add_scalar(key, value, global_step=step)
    return clean

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_metrics(path: str | os.PathLike, *, kind: str | None = None) -> list[dict[str, Any]]:
  """Reads metrics.jsonl (or its directory), keeping the last row per (kind, step).

  Args:
    path: the JSONL file or the run directory holding it.
    kind: 'train', 'eval' or 'sft' to keep only that kind of row; None keeps all.

  Returns:
    Rows sorted by (kind, step). A torn last line (a run killed mid-write) is skipped;
    any other malformed line raises naming the file and line number.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, 'metrics.jsonl')
  last: dict[tuple[str, int], dict[str, Any]] = {}
  for row in read_jsonl(path):
    k = row_kind(row)
    if kind is not None and k != kind:
      continue
    step = row['sft/step'] if k == 'sft' else row['step']
    last[(k, step)] = row
  return [last[key] for key in sorted(last)]


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads a JSONL file of objects; a torn last line is skipped, other bad lines raise."""
  path = os.fspath(path)
  with open(path, encoding='utf-8') as f:
    lines = f.read().split('\n')
  while lines and not lines[-1].strip():
    lines.pop()
  rows = []
  for number, text in enumerate(lines, start=1):
    if not text.strip():
      continue
    try:
      row = json.loads(text)
    except json.JSONDecodeError as e:
      if number == len(lines):
        continue  # the writer died mid-line (a run killed while logging)
      raise ValueError(f'{path}:{number}: malformed JSONL line ({e})') from None
    if not isinstance(row, dict):
      raise ValueError(f'{path}:{number}: expected a JSON object, got {type(row).__name__}')
    rows.append(row)
  return rows


def summarize(eval_rows: Iterable[Mapping[str, Any]], *, key: str = 'eval/greedy_acc', n=3):
  """Mean of the last `n` evaluations (issue 5: summaries never rest on one noisy eval)."""
  values = [r[key] for r in eval_rows if key in r]
  if not values:
    raise ValueError(f'no evaluation rows with {key!r}')
  return float(np.mean(values[-n:]))


def plot_run(directory: str | os.PathLike, *, path: str | None = None) -> str:
  """Saves a figure of reward and accuracy against step; returns its path."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  directory = os.fspath(directory)
  train = read_metrics(directory, kind='train')
  evals = read_metrics(directory, kind='eval')
  fig, (ax_r, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
  ax_r.plot([r['step'] for r in train], [r['train/reward_mean'] for r in train], lw=1)
  ax_r.set(xlabel='rollout step', ylabel='train reward (mean)', title='reward')
  for key, label in (('eval/greedy_acc', 'greedy'), ('eval/avg_at_k', 'avg@k')):
    rows = [r for r in evals if key in r]
    ax_a.plot([r['step'] for r in rows], [r[key] for r in rows], marker='o', label=label)
  ax_a.set(xlabel='rollout step', ylabel='held-out accuracy', title='accuracy')
  ax_a.legend()
  fig.tight_layout()
  path = path or os.path.join(directory, 'curves.png')
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def progress_bar(total: int, *, initial: int = 0, disable: bool = False):
  """A tqdm bar over rollout steps; update its postfix with `set_postfix`."""
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, disable=disable, desc='rl', dynamic_ncols=True)

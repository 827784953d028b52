"""Shared helpers for experiment tables: paper-layout printing, JSON, metrics curves.

Every experiment prints its table with the paper's number beside each of ours. A cell the
paper gives no number for prints "n/a" (`NA`); a paper value is always passed in from a
constant that cites PAPERS.md, never computed here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

NA = 'n/a'
NOT_REACHED = 'not reached'


# The smoke-size trainer run every study's quick preset builds on: tiny batches and short
# completions, and the 'format' reward (the completion is digits only), which is learnable
# from scratch, so rewards vary within groups and the weights move within a few steps.
SMOKE_OVERRIDES = (
  'data.rewards=format',
  'data.held_out_size=64',
  'batch.prompts_per_step=8',
  'batch.mini_batch=8',
  'batch.micro_batch=8',
  'sampler.max_new_tokens=5',
  'optim.lr=1e-2',
  'eval.size=16',
)


# ----------------------------------------------------------------------------- formatting


def fmt_num(value: float | None, *, digits: int = 2, scale: float = 1.0, suffix: str = '') -> str:
  """`value * scale` with `digits` decimals; None or non-finite prints "n/a"."""
  if value is None or not math.isfinite(float(value)):
    return NA
  return f'{float(value) * scale:.{digits}f}{suffix}'


def fmt_mean_std(values: Sequence[float], *, digits: int = 2, scale: float = 1.0) -> str:
  """'mean ± std' (population std, ddof 0) of `values * scale`; empty prints "n/a"."""
  arr = np.asarray(values, np.float64) * scale
  if arr.size == 0:
    return NA
  return f'{arr.mean():.{digits}f} ± {arr.std():.{digits}f}'


def mean_std(values: Sequence[float]) -> dict[str, float | int]:
  """{'mean', 'std' (ddof 0), 'n'} of `values` (JSON-ready)."""
  arr = np.asarray(values, np.float64)
  if arr.size == 0:
    raise ValueError('mean_std needs at least one value')
  return {'mean': float(arr.mean()), 'std': float(arr.std()), 'n': int(arr.size)}


def paper_cell(value: Any) -> str:
  """A paper value as text: None prints "n/a" (the paper gives no number)."""
  if value is None:
    return NA
  return str(value)


def format_table(
  title: str,
  columns: Sequence[str],
  rows: Sequence[tuple[str, Sequence[str]]],
  *,
  paper: Mapping[str, Sequence[Any]] | None = None,
  notes: Sequence[str] = (),
) -> str:
  """A plain-text table in the paper's layout, each of our cells with the paper's beside it.

  Args:
    title: printed above the table (name the paper's table, e.g. 'Table 2 (paper) ...').
    columns: the data column names (the row-label column is unnamed).
    rows: `(label, cells)` pairs, `len(cells) == len(columns)`; cells are strings.
    paper: row label -> the paper's cells for that row (same length as `columns`; None
      entries print "n/a"). When given, every data column becomes 'ours | paper', and a row
      missing from `paper` prints "n/a" throughout: nothing is invented.
    notes: lines printed under the table.

  Returns:
    The table as one string (no trailing newline).
  """
  ncol = len(columns)
  for label, cells in rows:
    if len(cells) != ncol:
      raise ValueError(f'row {label!r} has {len(cells)} cells, expected {ncol} ({columns})')
  if paper is not None:
    for label, cells in paper.items():
      if len(cells) != ncol:
        raise ValueError(f'paper row {label!r} has {len(cells)} cells, expected {ncol}')
  header = [''] + list(columns)
  body = []
  for label, cells in rows:
    if paper is None:
      body.append([label, *cells])
    else:
      theirs = paper.get(label, [None] * ncol)
      body.append([label, *(f'{c} | {paper_cell(p)}' for c, p in zip(cells, theirs))])
  widths = [max(len(r[i]) for r in [header, *body]) for i in range(ncol + 1)]
  line = lambda r: '  '.join(
    c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
  ).rstrip()
  rule = '-' * (sum(widths) + 2 * ncol)
  out = [title]
  if paper is not None:
    out.append('(each cell: ours | paper; "n/a" where the paper gives no number)')
  out += [rule, line(header), rule, *(line(r) for r in body), rule, *notes]
  return '\n'.join(out)


# ----------------------------------------------------------------------------- JSON


def json_ready(obj: Any) -> Any:
  """Numpy/jax scalars and arrays to Python; non-finite floats to None (JSON has no NaN)."""
  if isinstance(obj, Mapping):
    return {str(k): json_ready(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_ready(v) for v in obj]
  if hasattr(obj, 'tolist') and not isinstance(obj, (str, bytes)):
    return json_ready(obj.tolist())
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def write_json(path: str | os.PathLike, obj: Any) -> str:
  """Writes `obj` as indented JSON atomically (temp file + rename); returns the path.

  Numpy values become Python numbers and non-finite floats become null, so the file is
  strict JSON any reader accepts.
  """
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(json_ready(obj), f, indent=2, allow_nan=False)
    f.write('\n')
  os.replace(tmp, path)
  return path


def read_json(path: str | os.PathLike) -> Any:
  """Reads a JSON file, naming the file in any parse error."""
  path = os.fspath(path)
  with open(path, encoding='utf-8') as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: malformed JSON ({e})') from None


def curve(rows: Sequence[Mapping[str, Any]], key: str, *, x: str = 'step'):
  """`(x_N, y_N)` float arrays of the rows that hold both `x` and `key`, sorted by x."""
  pts = sorted((float(r[x]), float(r[key])) for r in rows if key in r and x in r)
  if not pts:
    return np.zeros(0), np.zeros(0)
  xs, ys = zip(*pts)
  return np.asarray(xs), np.asarray(ys)


# ----------------------------------------------------------------------------- curves


def smooth(y_N: Sequence[float], *, window: int) -> np.ndarray:
  """Centred moving average of odd width `window`, shrinking at the ends.

  Centred (not trailing) so that smoothing does not delay the step at which a curve
  reaches a level; `window=1` returns `y_N` unchanged.
  """
  if window < 1 or window % 2 == 0:
    raise ValueError(f'`window` must be a positive odd integer, got {window}')
  y = np.asarray(y_N, np.float64)
  if y.ndim != 1:
    raise ValueError(f'smooth expects a 1-D curve, got shape {y.shape}')
  half = window // 2
  csum = np.concatenate([[0.0], np.cumsum(y)])
  idx = np.arange(y.size)
  lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, y.size)
  return (csum[hi] - csum[lo]) / (hi - lo)


def seed_average(curves: Sequence[tuple[Sequence[float], Sequence[float]]]):
  """Averages per-seed `(x, y)` curves on the x values they all share.

  Returns:
    `(x_N, mean_N, std_N)`; std over seeds with ddof 0. Raises if the seeds share no x
    (e.g. evaluations at different steps), naming how many points each seed had.
  """
  if not curves:
    raise ValueError('seed_average needs at least one curve')
  common = set(np.asarray(curves[0][0]).tolist())
  for xs, _ in curves[1:]:
    common &= set(np.asarray(xs).tolist())
  if not common:
    raise ValueError(
      f'the seeds share no x values (points per seed: {[len(c[0]) for c in curves]})'
    )
  x = np.asarray(sorted(common), np.float64)
  ys = []
  for xs, y in curves:
    lookup = dict(zip(np.asarray(xs).tolist(), np.asarray(y, np.float64).tolist()))
    ys.append([lookup[v] for v in x.tolist()])
  ys = np.asarray(ys)
  return x, ys.mean(0), ys.std(0)


def smoothed_seed_curve(curves, *, window: int):
  """The seed-averaged curve, smoothed: `(x_N, smoothed_mean_N, raw_mean_N, std_N)`."""
  x, mean, std = seed_average(curves)
  return x, smooth(mean, window=window), mean, std


def first_reach(x_N: Sequence[float], y_N: Sequence[float], level: float, *, rtol: float = 1e-9):
  """The first x with y >= level (to a relative `rtol`), or None when never reached."""
  x, y = np.asarray(x_N, np.float64), np.asarray(y_N, np.float64)
  hit = np.nonzero(y >= level - rtol * max(abs(level), 1.0))[0]
  return float(x[hit[0]]) if hit.size else None


def interp_at(x_N: Sequence[float], y_N: Sequence[float], at: float) -> float:
  """y at `at`, linearly interpolated on a sorted x (a cumulative counter read at a step)."""
  x, y = np.asarray(x_N, np.float64), np.asarray(y_N, np.float64)
  if x.size == 0:
    raise ValueError('interp_at needs a non-empty curve')
  if at < x[0] or at > x[-1]:
    raise ValueError(f'{at} is outside the curve range [{x[0]}, {x[-1]}]')
  return float(np.interp(at, x, y))


def speedup(baseline: float | None, other: float | None) -> float | None:
  """`baseline / other`, the cost ratio in the paper's tables; None if either is missing."""
  if baseline is None or other is None or other <= 0:
    return None
  return float(baseline) / float(other)


def fmt_speedup(value: float | None, *, reached: bool = True) -> str:
  """'1.23x'; "not reached" when the method never reached the level, else "n/a" if undefined."""
  if value is None:
    return NA if reached else NOT_REACHED
  return f'{value:.2f}x'

"""The surrogate analysis (GXPO paper Table 6 kind, PAPERS.md §3): how well th0 + (S_K/S_2)
(th2 - th0) matches the real K-step point th_K on quadratics.

Rows: diagonal quadratics with SGD (Corollary 2: exact), random SPD quadratics with SGD, with
Adam and with gradient clipping. The error of a problem is ||th^_K - th_K|| / ||th_K - th0||,
with th^_K from `gxpo_point` (alpha = 1) and th_K from `lookahead_point` (K real steps).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grpo_jax.transforms.gxpo import gxpo, gxpo_point
from grpo_jax.transforms.plain import plain
from grpo_jax.transforms.sfpo import lookahead, lookahead_point, sfpo

# The paper states Corollary 2 (exactness) but prints no Table 6 numbers we have: every other
# cell of the paper column is "n/a" (never invented).
PAPER = {
  'diagonal_sgd': {'3': 'exact (Cor. 2)', '5': 'exact (Cor. 2)', '10': 'exact (Cor. 2)'},
  'spd_sgd': {'3': 'n/a', '5': 'n/a', '10': 'n/a'},
  'spd_adam': {'3': 'n/a', '5': 'n/a', '10': 'n/a'},
  'spd_sgd_clip': {'3': 'n/a', '5': 'n/a', '10': 'n/a'},
}
ROW_TITLES = {
  'diagonal_sgd': 'diagonal, SGD',
  'spd_sgd': 'SPD {dim}-d, SGD',
  'spd_adam': 'SPD {dim}-d, Adam',
  'spd_sgd_clip': 'SPD {dim}-d, SGD + clip',
}


@dataclasses.dataclass(frozen=True)
class SurrogateConfig:
  """Sizes and optimizer settings of the analysis.

  Attributes:
    ks: lookahead horizons K.
    dim: dimension of the quadratics.
    n_problems: random quadratics per row (mean and std are over these).
    cond: condition number; eigenvalues are log-uniform in [1/cond, 1].
    sgd_lr: SGD step size (eta * lambda_max <= 1, Corollary 2's condition).
    adam_lr: Adam step size.
    clip_fraction: the clip row's max_grad_norm as a fraction of ||g0||.
    seed: PRNG seed.
  """

  ks: tuple[int, ...] = (3, 5, 10)
  dim: int = 50
  n_problems: int = 32
  cond: float = 100.0
  sgd_lr: float = 0.5
  adam_lr: float = 0.02
  clip_fraction: float = 0.5
  seed: int = 0

  def __post_init__(self):
    if not self.ks or any(int(k) < 2 for k in self.ks):
      raise ValueError(f'SurrogateConfig.ks must be integers >= 2, got {self.ks}')
    if self.dim < 1 or self.n_problems < 1:
      raise ValueError(
        f'SurrogateConfig.dim and .n_problems must be >= 1, got {self.dim}, {self.n_problems}'
      )
    if not 0 < self.sgd_lr <= 1:
      raise ValueError(f'SurrogateConfig.sgd_lr must be in (0, 1] (eta h <= 1), got {self.sgd_lr}')
    if not 0 < self.clip_fraction < 1:
      raise ValueError(f'SurrogateConfig.clip_fraction must be in (0, 1), got {self.clip_fraction}')


def random_problems(config: SurrogateConfig, *, diagonal: bool) -> tuple[np.ndarray, np.ndarray]:
  """Random SPD (or diagonal) Hessians H with eigenvalues log-uniform in [1/cond, 1] (the
  largest is 1), and starting points th0 ~ N(0, I); float64 numpy arrays."""
  rng = np.random.default_rng(config.seed + (1 if diagonal else 0))
  n, d = config.n_problems, config.dim
  eig = np.exp(rng.uniform(-np.log(config.cond), 0.0, (n, d)))
  eig[:, 0] = 1.0
  if diagonal:
    hess = np.stack([np.diag(e) for e in eig])
  else:
    q, _ = np.linalg.qr(rng.standard_normal((n, d, d)))
    hess = q @ (eig[:, :, None] * np.swapaxes(q, 1, 2))
    hess = 0.5 * (hess + np.swapaxes(hess, 1, 2))
  theta0 = rng.standard_normal((n, d))
  return hess, theta0


def _error(hess, theta0, *, inner, k, clip_fraction):
  """Relative th_K error of GXPO's extrapolation for one quadratic 0.5 th^T H th."""
  grad_fn = lambda th: hess @ th  # noqa: E731
  g0 = grad_fn(theta0)
  clip = None if clip_fraction is None else clip_fraction * jnp.linalg.norm(g0)
  state = inner.init(theta0)
  point = gxpo_point(
    theta0, g0, state, grad_fn=grad_fn, inner=inner, k=k, max_grad_norm=clip, alpha=1.0
  )
  exact, _ = lookahead_point(
    theta0, g0, state, grad_fn=grad_fn, inner=inner, k=k, max_grad_norm=clip, alpha=1.0
  )
  return jnp.linalg.norm(point.params - exact) / jnp.linalg.norm(exact - theta0)


@functools.partial(jax.jit, static_argnames=('k', 'row', 'sgd_lr', 'adam_lr', 'clip_fraction'))
def _row_errors(hess, theta0, *, k, row, sgd_lr, adam_lr, clip_fraction):
  inner = optax.adam(adam_lr) if row == 'spd_adam' else optax.sgd(sgd_lr)
  fn = functools.partial(
    _error, inner=inner, k=k, clip_fraction=clip_fraction if row == 'spd_sgd_clip' else None
  )
  return jax.vmap(fn)(hess, theta0)


def corollary2_error(hess_diag: jax.Array, theta0: jax.Array, *, k: int, lr: float) -> float:
  """max |one `gxpo` step - (K+1) GD steps| with plain SGD and alpha = 1 (PAPERS.md §3)."""
  grad_fn = lambda th: hess_diag * th  # noqa: E731
  tx = gxpo(optax.sgd(lr), k=k, alpha=1.0, max_grad_norm=None)
  updates, _ = jax.jit(functools.partial(tx.update, grad_fn=grad_fn))(
    grad_fn(theta0), tx.init(theta0), theta0
  )
  got = theta0 + updates
  ref = theta0
  for _ in range(k + 1):
    ref = ref - lr * grad_fn(ref)
  return float(jnp.max(jnp.abs(got - ref)))


def backward_passes_per_step(k: int, dim: int = 4) -> dict[str, int]:
  """Backward passes of one active call of each rule, read from the rules' states."""
  theta0 = jnp.linspace(-1.0, 1.0, dim)
  grad_fn = lambda th: th  # noqa: E731
  rules = {
    'plain': plain(optax.sgd(0.1)),
    'sfpo': sfpo(optax.sgd(0.1), k=k, alpha=0.8),
    'lookahead': lookahead(optax.sgd(0.1), k=k, alpha=0.8),
    'gxpo': gxpo(optax.sgd(0.1), k=k, alpha=0.5),
  }
  out = {}
  for name, tx in rules.items():
    step = jax.jit(functools.partial(tx.update, grad_fn=grad_fn, entropy=jnp.float32(1.0)))
    _, state = step(grad_fn(theta0), tx.init(theta0), theta0)
    out[name] = int(state.step_backward_passes)
  return out


def run(config: SurrogateConfig) -> dict[str, Any]:
  """Runs every row of the analysis (float64).

  Returns:
    A JSON-ready dict: 'config', 'rows' {row: {K: {'mean', 'std', 'max'}}}, 'paper',
    'corollary2_max_abs_err' {K: float}, 'backward_passes' {K: {rule: int}}.
  """
  with jax.enable_x64(True):
    problems = {
      'diagonal_sgd': random_problems(config, diagonal=True),
      'spd': random_problems(config, diagonal=False),
    }
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for row in PAPER:
      hess, theta0 = problems['diagonal_sgd' if row == 'diagonal_sgd' else 'spd']
      hess, theta0 = jnp.asarray(hess), jnp.asarray(theta0)
      rows[row] = {}
      for k in config.ks:
        err = np.asarray(
          _row_errors(
            hess,
            theta0,
            k=int(k),
            row=row,
            sgd_lr=config.sgd_lr,
            adam_lr=config.adam_lr,
            clip_fraction=config.clip_fraction,
          )
        )
        rows[row][str(k)] = {
          'mean': float(err.mean()),
          'std': float(err.std()),
          'max': float(err.max()),
        }
    hess, theta0 = problems['diagonal_sgd']
    cor2 = {
      str(k): corollary2_error(
        jnp.asarray(np.diagonal(hess[0])), jnp.asarray(theta0[0]), k=int(k), lr=config.sgd_lr
      )
      for k in config.ks
    }
  passes = {str(k): backward_passes_per_step(int(k)) for k in config.ks}
  return {
    'config': dataclasses.asdict(config),
    'rows': rows,
    'paper': {row: {str(k): PAPER[row].get(str(k), 'n/a') for k in config.ks} for row in PAPER},
    'corollary2_max_abs_err': cor2,
    'backward_passes': passes,
  }


def format_table(results: dict[str, Any]) -> str:
  """The table in the paper's Table 6 layout: one row per setting, one column per K, our
  relative th_K error (mean +- std over problems) with the paper's value beside it."""
  ks = [str(k) for k in results['config']['ks']]
  dim = results['config']['dim']
  head = f'{"setting":<22}' + ''.join(f'| K={k:<4} ours {"":<13} paper {"":<10}' for k in ks)
  lines = [
    'Table 6: surrogate displacement error ||th^_K - th_K|| / ||th_K - th0|| (alpha = 1)',
    head,
    '-' * len(head),
  ]
  for row, cells in results['rows'].items():
    line = f'{ROW_TITLES[row].format(dim=dim):<22}'
    for k in ks:
      cell = cells[k]
      ours = f'{cell["mean"]:.2e} ± {cell["std"]:.1e}'
      line += f'| {ours:<26} {results["paper"][row][k]:<16}'
    lines.append(line)
  cor2 = ', '.join(f'K={k}: {v:.1e}' for k, v in results['corollary2_max_abs_err'].items())
  lines.append(f'Corollary 2, max |GXPO step - (K+1) GD steps|: {cor2}')
  bp = results['backward_passes']
  lines.append(
    'backward passes per active step: '
    + '; '.join(f'K={k}: ' + ', '.join(f'{n} {v}' for n, v in bp[k].items()) for k in ks)
  )
  return '\n'.join(lines)

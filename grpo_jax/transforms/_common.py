"""Shared pieces of the update rules: consumed gradients, one inner step, norms, casts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

# Global-norm threshold below which GXPO's retention is undefined (PAPERS.md §3, fallback).
MIN_G0_NORM = 1e-8

# Fallback codes stored in the state (PAPERS.md §3, "Conventions pinned", checked in order).
FALLBACK_NONE = 0
FALLBACK_G0_NONFINITE = 1
FALLBACK_G0_SMALL = 2
FALLBACK_G1_NONFINITE = 3
FALLBACK_G_SLOW_NONFINITE = 4
FALLBACK_FAST_NONFINITE = 5

STATE_MODES = ('advance', 'transactional')
RETENTIONS = ('consumed', 'raw')


def stat_dtype(tree: Any) -> jnp.dtype:
  """The float dtype for per-coordinate rule math: at least float32, float64 under x64 params."""
  dtypes = [jnp.dtype(x.dtype) for x in jax.tree.leaves(tree)]
  out = jnp.dtype(jnp.float32)
  for d in dtypes:
    if jnp.issubdtype(d, jnp.floating):
      out = jnp.promote_types(out, d)
  return out


def global_norm(tree: Any) -> jax.Array:
  """L2 norm over all leaves, accumulated in float32 (float64 for float64 leaves)."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros([], jnp.float32)
  dt = stat_dtype(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(dt))) for x in leaves))


def tree_vdot(a: Any, b: Any) -> jax.Array:
  """Sum over leaves of the elementwise product, in float32 or wider."""
  dt = jnp.promote_types(stat_dtype(a), stat_dtype(b))
  return sum(
    jnp.sum(x.astype(dt) * y.astype(dt))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def cosine(a: Any, b: Any) -> jax.Array:
  """cos(a, b) over the flattened trees; 0 when either is zero."""
  na, nb = global_norm(a), global_norm(b)
  den = na * nb
  return jnp.where(den > 0, tree_vdot(a, b) / jnp.where(den > 0, den, 1.0), 0.0)


def all_finite(tree: Any) -> jax.Array:
  """True iff every entry of every leaf is finite."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def consume(grads: Any, max_grad_norm: Any) -> Any:
  """The gradients the inner optimizer consumes: optax global-norm clipping, or as is.

  optax semantics (PAPERS.md §3, "Conventions pinned"): g is scaled to g*c/||g|| when
  ||g|| >= c. The clip lives here rather than in `inner` so that retention can be computed
  from the consumed gradients.
  """
  if max_grad_norm is None:
    return grads
  clipped, _ = optax.clip_by_global_norm(max_grad_norm).update(grads, optax.EmptyState())
  return clipped


def cast_like(new: Any, old: Any) -> Any:
  """Casts each leaf of `new` to the dtype of the matching leaf of `old`.

  Keeps states and updates type-stable across `lax.cond` branches and across steps
  (a hyperparameter injected as float64 would otherwise promote float32 statistics).
  """
  return jax.tree.map(lambda n, o: jnp.asarray(n).astype(jnp.asarray(o).dtype), new, old)


def add(params: Any, updates: Any) -> Any:
  """`optax.apply_updates`, keeping each parameter's dtype."""
  return optax.apply_updates(params, updates)


def displacement(new_params: Any, params: Any, like: Any) -> Any:
  """`new_params - params`, computed in the rule dtype and cast to the dtypes of `like`."""
  dt = stat_dtype(params)
  return jax.tree.map(
    lambda n, p, u: (n.astype(dt) - p.astype(dt)).astype(u.dtype), new_params, params, like
  )


def zeros_like_updates(like: Any) -> Any:
  return jax.tree.map(jnp.zeros_like, like)


class InnerStep(NamedTuple):
  """One step of the inner optimizer on consumed gradients."""

  updates: Any
  params: Any
  inner_state: Any
  consumed: Any


def inner_step(
  inner: optax.GradientTransformationExtraArgs,
  grads: Any,
  inner_state: Any,
  params: Any,
  *,
  max_grad_norm: Any,
  extra: dict[str, Any],
) -> InnerStep:
  """Clips (if asked), runs `inner.update`, and applies the update to `params`."""
  consumed = consume(grads, max_grad_norm)
  updates, new_state = inner.update(consumed, inner_state, params, **extra)
  new_state = cast_like(new_state, inner_state)
  updates = cast_like(updates, grads)
  return InnerStep(updates, add(params, updates), new_state, consumed)


def plain_or_skip(
  inner: optax.GradientTransformationExtraArgs,
  grads: Any,
  inner_state: Any,
  params: Any,
  *,
  max_grad_norm: Any,
  extra: dict[str, Any],
) -> tuple[Any, Any, jax.Array]:
  """One plain step; a step with a non-finite gradient is skipped (PAPERS.md §3).

  Returns:
    (updates, new inner state, skipped) with zero updates and the state unchanged if skipped.
  """
  finite = all_finite(grads)

  def step(_):
    out = inner_step(inner, grads, inner_state, params, max_grad_norm=max_grad_norm, extra=extra)
    return out.updates, out.inner_state

  def skip(_):
    return zeros_like_updates(grads), inner_state

  updates, new_state = jax.lax.cond(finite, step, skip, None)
  return updates, new_state, jnp.logical_not(finite)


def as_inner(inner: Any, name: str) -> optax.GradientTransformationExtraArgs:
  """Validates `inner` and gives it the extra-args signature."""
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
      f'`{name}(inner=...)` must be an optax.GradientTransformation, got {type(inner).__name__}'
    )
  return optax.with_extra_args_support(inner)


def check_static_int(value: Any, name: str, rule: str, minimum: int) -> int:
  """`k` selects the unrolled/looped structure, so it must be a Python int."""
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(
      f'`{rule}(k=...)` must be a Python int, got {type(value).__name__}; under '
      f"optax.inject_hyperparams pass static_args=('{name}',)"
    )
  if value < minimum:
    raise ValueError(f'`{rule}({name}=...)` must be >= {minimum}, got {value}')
  return value


def check_number(value: Any, name: str, rule: str, *, lo=None, hi=None, allow_none=False):
  """Range-checks Python numbers; arrays (injected hyperparameters) are taken as given."""
  if value is None:
    if allow_none:
      return value
    raise ValueError(f'`{rule}({name}=...)` must be a number, got None')
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    if lo is not None and not value >= lo:
      raise ValueError(f'`{rule}({name}=...)` must be >= {lo}, got {value}')
    if hi is not None and not value <= hi:
      raise ValueError(f'`{rule}({name}=...)` must be <= {hi}, got {value}')
  return value


def check_positive_or_none(value: Any, name: str, rule: str):
  if isinstance(value, (int, float)) and not isinstance(value, bool) and not value > 0:
    raise ValueError(f'`{rule}({name}=...)` must be > 0 or None, got {value}')
  return value


def check_choice(value: Any, name: str, rule: str, choices: tuple[str, ...]) -> str:
  if value not in choices:
    raise ValueError(f'`{rule}({name}=...)` must be one of {choices}, got {value!r}')
  return value


def check_call(rule: str, params: Any, grad_fn: Callable | None, *, need_grad_fn: bool = True):
  """Clear errors for a call that cannot run the rule."""
  if params is None:
    raise ValueError(f'`{rule}.update` needs `params` (the parameters the gradient is taken at)')
  if need_grad_fn and not callable(grad_fn):
    raise ValueError(
      f'`{rule}.update` needs the keyword argument `grad_fn`: a callable params -> raw grads '
      'on the same mini-batch'
    )


def scalar(value: Any, dtype=jnp.float32) -> jax.Array:
  return jnp.asarray(value, dtype)


def nan() -> jax.Array:
  return jnp.full([], jnp.nan, jnp.float32)


def empty_diagnostics(cls: type, g0_norm: Any = None) -> Any:
  """A diagnostics NamedTuple of NaNs ("not measured by this call"), with ‖g0‖ if known."""
  fields = {f: nan() for f in cls._fields}
  if g0_norm is not None:
    fields['g0_norm'] = jnp.asarray(g0_norm, jnp.float32)
  return cls(**fields)

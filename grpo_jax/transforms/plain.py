"""GRPO's update as a rule: one optimizer step per call, with the rules' call contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from grpo_jax.transforms import _common as c


class PlainDiagnostics(NamedTuple):
  """What the last call measured (PAPERS.md §3 diagnostics that apply to one pass)."""

  g0_norm: jax.Array


class PlainState(NamedTuple):
  """State of `plain`.

  Attributes:
    count: calls to `update`.
    backward_passes: cumulative backward passes (1 per call, counting g0).
    step_backward_passes: backward passes of the last call.
    skipped: cumulative calls skipped because the gradient was non-finite.
    diagnostics: see `PlainDiagnostics`.
    inner_state: state of the wrapped optimizer.
  """

  count: jax.Array
  backward_passes: jax.Array
  step_backward_passes: jax.Array
  skipped: jax.Array
  diagnostics: PlainDiagnostics
  inner_state: optax.OptState


def plain(
  inner: optax.GradientTransformation, *, max_grad_norm: float | None = None
) -> optax.GradientTransformationExtraArgs:
  """GRPO's rule: clip (optionally) and take one inner step per call.

  It takes the same call as `gxpo`/`sfpo`, so a trainer never branches on the rule:
  `update(g0, state, params, *, grad_fn=None, entropy=None, **extra)`. `grad_fn` and
  `entropy` are accepted and unused (one backward pass per call, the caller's g0). A call
  whose gradient is non-finite is skipped: zero updates, inner state unchanged.

  Args:
    inner: any optax optimizer (sgd, adamw, a chain with a schedule...).
    max_grad_norm: global-norm clip applied before `inner` (optax semantics), or None.

  Returns:
    An `optax.GradientTransformationExtraArgs`; apply with `optax.apply_updates`.
  """
  inner = c.as_inner(inner, 'plain')
  c.check_positive_or_none(max_grad_norm, 'max_grad_norm', 'plain')

  def init_fn(params):
    zero = jnp.zeros([], jnp.int32)
    return PlainState(
      count=zero,
      backward_passes=zero,
      step_backward_passes=zero,
      skipped=zero,
      diagnostics=PlainDiagnostics(g0_norm=c.nan()),
      inner_state=inner.init(params),
    )

  def update_fn(
    updates: Any,
    state: PlainState,
    params: Any = None,
    *,
    grad_fn: Callable | None = None,
    entropy: Any = None,
    **extra: Any,
  ):
    del grad_fn, entropy
    c.check_call('plain', params, None, need_grad_fn=False)
    new_updates, inner_state, skipped = c.plain_or_skip(
      inner, updates, state.inner_state, params, max_grad_norm=max_grad_norm, extra=extra
    )
    one = jnp.ones([], jnp.int32)
    new_state = PlainState(
      count=optax.safe_increment(state.count),
      backward_passes=state.backward_passes + one,
      step_backward_passes=one,
      skipped=state.skipped + skipped.astype(jnp.int32),
      diagnostics=PlainDiagnostics(g0_norm=c.global_norm(updates).astype(jnp.float32)),
      inner_state=inner_state,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)

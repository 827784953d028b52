"""SFPO (arXiv 2510.04072, PAPERS.md §2) and the exact K-pass lookahead it is built on.

    Stage I   fast:       th^{k+1} = Opt.step(th^k, grad L(th^k)),  k = 0..K-1
    Stage II  reposition: th~ = th^0 + alpha (th^K - th^0)
    Stage III slow:       th_next = Opt.step(th~, grad L(th~))

`lookahead` is that rule with no trigger: the exact point GXPO's three-pass estimate
approximates (PAPERS.md §3). `sfpo` adds the entropy z-score trigger that switches to
plain steps for good.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from grpo_jax.transforms import _common as c

# Denominator epsilon of the entropy z-score (PAPERS.md §2, "Conventions pinned").
ENTROPY_EPS = 1e-9


class FastSteps(NamedTuple):
  """Stage I: K inner steps on the same mini-batch."""

  params: Any  # th^K (or the last finite iterate)
  inner_state: Any
  ok: jax.Array  # every fast gradient was finite
  passes: jax.Array  # backward passes spent, counting g0


def fast_steps(
  params: Any,
  g0: Any,
  inner_state: Any,
  *,
  grad_fn: Callable[[Any], Any],
  inner: optax.GradientTransformationExtraArgs,
  k: int,
  max_grad_norm: Any,
  extra: dict[str, Any],
) -> FastSteps:
  """K real optimizer steps from th^0 (g0 given; grad_fn called K-1 times).

  A `lax.while_loop` keeps one copy of `grad_fn` in the program whatever K is, and stops
  at the first non-finite gradient so no pass is wasted after it.
  """
  first = c.inner_step(inner, g0, inner_state, params, max_grad_norm=max_grad_norm, extra=extra)
  one = jnp.ones([], jnp.int32)

  def cond(carry):
    i, _, _, ok, _ = carry
    return (i < k) & ok

  def body(carry):
    i, theta, state, _, passes = carry
    g = grad_fn(theta)
    finite = c.all_finite(g)

    def step(_):
      out = c.inner_step(inner, g, state, theta, max_grad_norm=max_grad_norm, extra=extra)
      return out.params, out.inner_state

    theta, state = jax.lax.cond(finite, step, lambda _: (theta, state), None)
    return i + 1, theta, state, finite, passes + one

  _, theta, state, ok, passes = jax.lax.while_loop(
    cond, body, (one, first.params, first.inner_state, jnp.asarray(True), one)
  )
  return FastSteps(theta, state, ok, passes)


def reposition(params: Any, fast_params: Any, alpha: Any) -> Any:
  """Stage II: th~ = th^0 + alpha (th^K - th^0), in float32 or wider."""
  dt = c.stat_dtype(params)
  return jax.tree.map(
    lambda p, q: (p.astype(dt) + alpha * (q.astype(dt) - p.astype(dt))).astype(p.dtype),
    params,
    fast_params,
  )


def lookahead_point(
  params: Any,
  g0: Any,
  inner_state: Any,
  *,
  grad_fn: Callable[[Any], Any],
  inner: optax.GradientTransformation,
  k: int,
  alpha: float = 1.0,
  max_grad_norm: float | None = None,
  extra: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
  """The exact lookahead point th~ = th0 + alpha (th_K - th0) from K real inner steps.

  Args:
    params: th0.
    g0: raw gradient at th0.
    inner_state: state of `inner` at th0.
    grad_fn: params -> raw gradients on the same mini-batch (called K-1 times).
    inner: the optimizer.
    k: number of fast steps K >= 1.
    alpha: reposition factor (1 gives th_K itself).
    max_grad_norm: clip before `inner`, or None.
    extra: extra keyword arguments for `inner.update`.

  Returns:
    (th~, inner state after the K fast steps).
  """
  inner = c.as_inner(inner, 'lookahead_point')
  k = c.check_static_int(k, 'k', 'lookahead_point', 1)
  fast = fast_steps(
    params,
    g0,
    inner_state,
    grad_fn=grad_fn,
    inner=inner,
    k=k,
    max_grad_norm=max_grad_norm,
    extra=extra or {},
  )
  return reposition(params, fast.params, alpha), fast.inner_state


class LookaheadDiagnostics(NamedTuple):
  """Diagnostics of the last call (NaN where the call did not measure them).

  Attributes:
    g0_norm, g_slow_norm: pre-clip global norms.
    cos_g0_g_slow: cosine of the raw gradients at th0 and th~.
    fast_norm: ||th^K - th^0||, the fast trajectory's displacement.
    entropy_z: SFPO's trigger z-score (NaN for `lookahead` and before W entropies).
  """

  g0_norm: jax.Array
  g_slow_norm: jax.Array
  cos_g0_g_slow: jax.Array
  fast_norm: jax.Array
  entropy_z: jax.Array


def _empty_diagnostics(g0_norm=None) -> LookaheadDiagnostics:
  return c.empty_diagnostics(LookaheadDiagnostics, g0_norm)


class _Call(NamedTuple):
  updates: Any
  inner_state: Any
  diagnostics: LookaheadDiagnostics
  passes: jax.Array
  code: jax.Array
  done: jax.Array  # False: the call ends with one plain step


def _call(
  g0,
  s0,
  params,
  *,
  run_lookahead,
  grad_fn,
  inner,
  k,
  alpha,
  max_grad_norm,
  state_mode,
  extra,
) -> _Call:
  """One call: the K+1-pass lookahead when `run_lookahead`, else one plain step.

  Fallback as GXPO's (PAPERS.md §3): a non-finite fast or slow gradient restores th0 and
  the inner state and takes one plain step with g0; a non-finite g0 skips the step.
  """
  g0_norm = c.global_norm(g0).astype(jnp.float32)
  i32 = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731

  def unfinished(passes, code):
    """A branch that leaves the call to the one plain step below."""

    def run(_):
      return _Call(
        c.zeros_like_updates(g0),
        s0,
        _empty_diagnostics(g0_norm),
        i32(passes),
        i32(code),
        jnp.asarray(False),
      )

    return run

  def lookahead_branch(_):
    fast = fast_steps(
      params,
      g0,
      s0,
      grad_fn=grad_fn,
      inner=inner,
      k=k,
      max_grad_norm=max_grad_norm,
      extra=extra,
    )

    def slow(_):
      tilde = reposition(params, fast.params, alpha)
      g_slow = grad_fn(tilde)  # Stage III
      passes = fast.passes + 1

      def step(_):
        s_slow = fast.inner_state if state_mode == 'advance' else s0
        out = c.inner_step(inner, g_slow, s_slow, tilde, max_grad_norm=max_grad_norm, extra=extra)
        diag = LookaheadDiagnostics(
          g0_norm=g0_norm,
          g_slow_norm=c.global_norm(g_slow),
          cos_g0_g_slow=c.cosine(g0, g_slow),
          fast_norm=c.global_norm(c.displacement(fast.params, params, g0)),
          entropy_z=c.nan(),
        )
        return _Call(
          c.displacement(out.params, params, g0),
          c.cast_like(out.inner_state, s0),
          c.cast_like(diag, _empty_diagnostics()),
          i32(passes),
          i32(c.FALLBACK_NONE),
          jnp.asarray(True),
        )

      return jax.lax.cond(
        c.all_finite(g_slow), step, unfinished(passes, c.FALLBACK_G_SLOW_NONFINITE), None
      )

    return jax.lax.cond(fast.ok, slow, unfinished(fast.passes, c.FALLBACK_FAST_NONFINITE), None)

  g0_finite = c.all_finite(g0)
  code = jnp.where(g0_finite, c.FALLBACK_NONE, c.FALLBACK_G0_NONFINITE)
  out = jax.lax.cond(run_lookahead & g0_finite, lookahead_branch, unfinished(1, code), None)

  # Fallbacks and plain calls share one plain step with g0 from th0 and the state before.
  def plain_step(_):
    u, s, _ = c.plain_or_skip(inner, g0, s0, params, max_grad_norm=max_grad_norm, extra=extra)
    return u, s

  updates, inner_state = jax.lax.cond(
    out.done, lambda _: (out.updates, out.inner_state), plain_step, None
  )
  return out._replace(updates=updates, inner_state=inner_state)


class LookaheadState(NamedTuple):
  """State of `lookahead`.

  Attributes:
    count: calls to `update`.
    backward_passes: cumulative backward passes, counting the caller's g0 (K+1 per call).
    step_backward_passes: backward passes of the last call.
    fallbacks: cumulative fallback calls.
    fallback_code: reason of the last call's fallback, 0 if none.
    diagnostics: see `LookaheadDiagnostics`.
    inner_state: state of the wrapped optimizer.
  """

  count: jax.Array
  backward_passes: jax.Array
  step_backward_passes: jax.Array
  fallbacks: jax.Array
  fallback_code: jax.Array
  diagnostics: LookaheadDiagnostics
  inner_state: optax.OptState


def lookahead(
  inner: optax.GradientTransformation,
  *,
  k: int,
  alpha: float = 1.0,
  max_grad_norm: float | None = None,
  state_mode: str = 'advance',
) -> optax.GradientTransformationExtraArgs:
  """The exact K-pass lookahead: K fast inner steps, reposition, one slow step.

  The reference GXPO approximates: with alpha = 1 one call equals K+1 inner steps. Costs
  K+1 backward passes per call counting the caller's g0. Call contract as `gxpo`.

  Args:
    inner: any optax optimizer.
    k: number of fast steps K >= 1 (a Python int).
    alpha: reposition factor in [0, 1].
    max_grad_norm: global-norm clip before `inner`, or None.
    state_mode: 'advance' (the slow step continues from the fast steps' inner state; the
      inner count rises by K+1 per call) or 'transactional' (from the state before them).

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  inner = c.as_inner(inner, 'lookahead')
  k = c.check_static_int(k, 'k', 'lookahead', 1)
  c.check_number(alpha, 'alpha', 'lookahead', lo=0.0, hi=1.0)
  c.check_positive_or_none(max_grad_norm, 'max_grad_norm', 'lookahead')
  c.check_choice(state_mode, 'state_mode', 'lookahead', c.STATE_MODES)

  def init_fn(params):
    zero = jnp.zeros([], jnp.int32)
    return LookaheadState(
      count=zero,
      backward_passes=zero,
      step_backward_passes=zero,
      fallbacks=zero,
      fallback_code=zero,
      diagnostics=_empty_diagnostics(),
      inner_state=inner.init(params),
    )

  def update_fn(updates, state, params=None, *, grad_fn=None, entropy=None, **extra):
    del entropy
    c.check_call('lookahead', params, grad_fn)
    out = _call(
      updates,
      state.inner_state,
      params,
      run_lookahead=jnp.asarray(True),
      grad_fn=grad_fn,
      inner=inner,
      k=k,
      alpha=alpha,
      max_grad_norm=max_grad_norm,
      state_mode=state_mode,
      extra=extra,
    )
    new_state = LookaheadState(
      count=optax.safe_increment(state.count),
      backward_passes=state.backward_passes + out.passes,
      step_backward_passes=out.passes,
      fallbacks=state.fallbacks + (out.code != c.FALLBACK_NONE).astype(jnp.int32),
      fallback_code=out.code,
      diagnostics=c.cast_like(out.diagnostics, state.diagnostics),
      inner_state=out.inner_state,
    )
    return out.updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class EntropyTrigger(NamedTuple):
  """SFPO's trigger statistics: the last W entropies (a ring buffer) and how many came."""

  history: jax.Array
  seen: jax.Array


def entropy_trigger_init(window: int) -> EntropyTrigger:
  return EntropyTrigger(history=jnp.zeros([window], jnp.float32), seen=jnp.zeros([], jnp.int32))


def entropy_trigger_update(
  trigger: EntropyTrigger, entropy: Any, *, tau: Any
) -> tuple[EntropyTrigger, jax.Array, jax.Array]:
  """Appends this call's entropy, then scores it against the last W values (PAPERS.md §2).

  Once W values exist, z = (e - mean)/(std_ddof0 + 1e-9) over the last W including e;
  trip iff z >= tau (one-sided). Before that z is NaN and nothing trips.

  Returns:
    (new trigger state, z, trip).
  """
  window = trigger.history.shape[0]
  e = jnp.asarray(entropy, jnp.float32)
  history = trigger.history.at[trigger.seen % window].set(e)
  seen = trigger.seen + 1
  full = seen >= window
  z = (e - jnp.mean(history)) / (jnp.std(history) + ENTROPY_EPS)
  z = jnp.where(full, z, jnp.nan)
  trip = full & (z >= jnp.asarray(tau, jnp.float32))
  return EntropyTrigger(history, seen), z, trip


class SfpoState(NamedTuple):
  """State of `sfpo`.

  Attributes:
    count: calls to `update`.
    active: False once the entropy trigger tripped (then every call is one plain step).
    trigger: entropy history of the trigger.
    backward_passes: cumulative backward passes, counting g0 (K+1 per active call).
    step_backward_passes: backward passes of the last call.
    fallbacks: cumulative fallback calls.
    fallback_code: reason of the last call's fallback, 0 if none.
    shutoff_count: value of `count` at the call that tripped, -1 before.
    diagnostics: see `LookaheadDiagnostics`.
    inner_state: state of the wrapped optimizer.
  """

  count: jax.Array
  active: jax.Array
  trigger: EntropyTrigger
  backward_passes: jax.Array
  step_backward_passes: jax.Array
  fallbacks: jax.Array
  fallback_code: jax.Array
  shutoff_count: jax.Array
  diagnostics: LookaheadDiagnostics
  inner_state: optax.OptState


def sfpo(
  inner: optax.GradientTransformation,
  *,
  k: int = 3,
  alpha: float = 0.8,
  max_grad_norm: float | None = 1.0,
  tau: float = 1.0,
  window: int = 30,
  state_mode: str = 'advance',
) -> optax.GradientTransformationExtraArgs:
  """SFPO as the outermost transformation around any optax optimizer (PAPERS.md §2).

  Call: `update(g0, state, params, *, grad_fn, entropy, **extra)` with `entropy` the
  scalar mean token entropy of this update's batch (required). Each fast step is one
  inner optimizer step (state persists, as in the authors' code); while active a call
  costs K+1 backward passes counting g0. The entropy is appended to the history first;
  once W values exist a z-score >= tau trips the trigger and this call is already a plain
  step, as is every later call. alpha = 0 also means one plain step per call.

  In the 'advance' state mode the inner count, and any schedule inside `inner`, advances
  once per inner step: K+1 per active call.

  Args:
    inner: any optax optimizer; the clip is `max_grad_norm`, not part of `inner`.
    k: fast steps K >= 1 (a Python int; static under inject_hyperparams).
    alpha: reposition factor in [0, 1].
    max_grad_norm: global-norm clip before `inner` (optax semantics), or None.
    tau: trigger threshold on the entropy z-score.
    window: W, the number of entropies the z-score is taken over (a Python int).
    state_mode: 'advance' (default) or 'transactional' (slow step from the state before
      the fast steps).

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  inner = c.as_inner(inner, 'sfpo')
  k = c.check_static_int(k, 'k', 'sfpo', 1)
  window = c.check_static_int(window, 'window', 'sfpo', 2)
  c.check_number(alpha, 'alpha', 'sfpo', lo=0.0, hi=1.0)
  c.check_number(tau, 'tau', 'sfpo')
  c.check_positive_or_none(max_grad_norm, 'max_grad_norm', 'sfpo')
  c.check_choice(state_mode, 'state_mode', 'sfpo', c.STATE_MODES)

  def init_fn(params):
    zero = jnp.zeros([], jnp.int32)
    return SfpoState(
      count=zero,
      active=jnp.asarray(True),
      trigger=entropy_trigger_init(window),
      backward_passes=zero,
      step_backward_passes=zero,
      fallbacks=zero,
      fallback_code=zero,
      shutoff_count=jnp.full([], -1, jnp.int32),
      diagnostics=_empty_diagnostics(),
      inner_state=inner.init(params),
    )

  def update_fn(updates, state, params=None, *, grad_fn=None, entropy=None, **extra):
    c.check_call('sfpo', params, grad_fn)
    if entropy is None:
      raise ValueError(
        '`sfpo.update` needs the keyword argument `entropy`: the scalar mean token entropy of '
        "this update's batch (PAPERS.md §2 trigger)"
      )
    if jnp.ndim(entropy) != 0:
      raise ValueError(
        f'`sfpo.update(entropy=...)` must be a scalar, got shape {jnp.shape(entropy)}'
      )
    trigger, z, trip = entropy_trigger_update(state.trigger, entropy, tau=tau)
    active = state.active & jnp.logical_not(trip)
    out = _call(
      updates,
      state.inner_state,
      params,
      run_lookahead=active & (jnp.asarray(alpha) > 0),
      grad_fn=grad_fn,
      inner=inner,
      k=k,
      alpha=alpha,
      max_grad_norm=max_grad_norm,
      state_mode=state_mode,
      extra=extra,
    )
    tripped_now = state.active & trip
    new_state = SfpoState(
      count=optax.safe_increment(state.count),
      active=active,
      trigger=trigger,
      backward_passes=state.backward_passes + out.passes,
      step_backward_passes=out.passes,
      fallbacks=state.fallbacks + (active & (out.code != c.FALLBACK_NONE)).astype(jnp.int32),
      fallback_code=out.code,
      shutoff_count=jnp.where(tripped_now, state.count, state.shutoff_count).astype(jnp.int32),
      diagnostics=c.cast_like(out.diagnostics._replace(entropy_z=z), state.diagnostics),
      inner_state=out.inner_state,
    )
    return out.updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)

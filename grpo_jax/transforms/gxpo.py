"""GXPO (arXiv 2605.06755, PAPERS.md §3): SFPO's K-step lookahead from three backward passes.

    pass 1: g0 = grad L(th0);   th1 = Opt.step(th0, g0)
    pass 2: g1 = grad L(th1);   th2 = Opt.step(th1, g1)
    r = clamp(g1 / g0s, -2, 3), scale = clamp(S_K(r) / S_2(r), 1, K/2 + 1)
    th~ = th0 + alpha * scale * (th2 - th0)
    pass 3: g_slow = grad L(th~); th_next = Opt.step(th~, g_slow)

and a one-sided EMA z-score gate on ||g_slow|| that switches the extrapolation off for good.
Every choice the paper leaves open follows PAPERS.md §3 "Conventions pinned".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from grpo_jax.transforms import _common as c

# Bounds on the per-coordinate retention ratio (PAPERS.md §3).
R_MIN, R_MAX = -2.0, 3.0
# Gate: EMA statistics start at mu = sigma = 1; sigma is floored; z's denominator epsilon.
GATE_MU0, GATE_SIGMA0, GATE_SIGMA_FLOOR, GATE_EPS = 1.0, 1.0, 0.01, 1e-8
# The first two observations never trip the gate.
GATE_MIN_OBS = 2


def retention(g0: Any, g1: Any, *, delta: Any = 1e-8) -> Any:
  """Per-coordinate retention r = g1 / g0s, g0s = sign(g0) max(|g0|, delta) (PAPERS.md §3).

  sign(g0) = +1 where g0 >= 0 (-0.0 included); r is clamped to [-2, 3] first, then
  non-finite entries become 1.

  Args:
    g0: gradients at th0 (consumed or raw, per the `retention` option).
    g1: gradients at th1, same structure.
    delta: magnitude floor for g0.

  Returns:
    r with the structure of g0, in float32 (float64 for float64 inputs).
  """

  def one(a, b):
    dt = c.stat_dtype([a, b])
    a, b = a.astype(dt), b.astype(dt)
    a_s = jnp.where(a >= 0, 1.0, -1.0).astype(dt) * jnp.maximum(jnp.abs(a), delta)
    r = jnp.clip(b / a_s, R_MIN, R_MAX)
    return jnp.where(jnp.isfinite(r), r, 1.0).astype(dt)

  return jax.tree.map(one, g0, g1)


def partial_sum(r: jax.Array, n: int) -> jax.Array:
  """S_n(r) = 1 + r + ... + r^(n-1) by Horner's rule.

  The closed form (1 - r^n)/(1 - r) is wrong at r = 1 and loses ~8 digits near it;
  Corollary 2 to 1e-12 needs the sum (PAPERS.md §3, "Conventions pinned").
  """
  s = jnp.ones_like(r)
  for _ in range(n - 1):
    s = 1.0 + r * s
  return s


def extrapolation_scale(r: Any, *, k: int, delta: Any = 1e-8) -> Any:
  """scale = clamp(S_K(r)/S_2(r), 1, K/2 + 1); 1 where |S_2| <= delta (PAPERS.md §3).

  Under gradient descent with a constant per-coordinate contraction g_{k+1} = r g_k the
  displacement after k steps is -eta g0 S_k(r), so th_K = th0 + (S_K/S_2)(th2 - th0).
  """

  def one(x):
    s2 = 1.0 + x
    ok = jnp.abs(s2) > delta
    ratio = partial_sum(x, k) / jnp.where(ok, s2, 1.0)
    return jnp.where(ok, jnp.clip(ratio, 1.0, k / 2 + 1.0), 1.0).astype(x.dtype)

  return jax.tree.map(one, r)


class GateState(NamedTuple):
  """EMA statistics of the shutoff gate (PAPERS.md §3, Algorithm 1)."""

  mu: jax.Array
  sigma: jax.Array
  n_obs: jax.Array


def gate_init() -> GateState:
  return GateState(
    mu=jnp.asarray(GATE_MU0, jnp.float32),
    sigma=jnp.asarray(GATE_SIGMA0, jnp.float32),
    n_obs=jnp.zeros([], jnp.int32),
  )


def gate_update(gate: GateState, h: Any, *, tau: Any, omega: Any) -> tuple[GateState, Any, Any]:
  """Scores one observation H, then updates the statistics with it.

  z = (H - mu)/(sigma + 1e-8) with the stored mu, sigma; sigma^2 <- (1-omega) sigma^2 +
  omega (H - mu_old)^2, sigma <- max(0.01, sigma); mu <- (1-omega) mu + omega H. The
  tripping observation updates the statistics too. Trip iff z >= tau and at least two
  observations came before this one.

  Returns:
    (new gate state, z, trip).
  """
  h = jnp.asarray(h, jnp.float32)
  tau = jnp.asarray(tau, jnp.float32)
  omega = jnp.asarray(omega, jnp.float32)
  z = (h - gate.mu) / (gate.sigma + GATE_EPS)
  var = (1.0 - omega) * jnp.square(gate.sigma) + omega * jnp.square(h - gate.mu)
  sigma = jnp.maximum(GATE_SIGMA_FLOOR, jnp.sqrt(var))
  mu = (1.0 - omega) * gate.mu + omega * h
  trip = (gate.n_obs >= GATE_MIN_OBS) & (z >= tau)
  new = GateState(mu=mu, sigma=sigma, n_obs=gate.n_obs + 1)
  return c.cast_like(new, gate), z.astype(jnp.float32), trip


class GxpoDiagnostics(NamedTuple):
  """PAPERS.md §3 diagnostics of the last call (NaN where the call did not measure them).

  Attributes:
    g0_norm, g1_norm, g_slow_norm: pre-clip global norms.
    cos_g0_g1, cos_g0_g_slow: cosines of the raw gradients.
    r_mean, r_std: mean/std of the retention ratio over all coordinates.
    scale_mean, scale_max: mean/max of the S_K/S_2 scale.
    reposition_ratio: ||th~ - th0|| / (alpha ||th2 - th0||).
    gate_z: z-score of ||g_slow|| against the statistics before this call.
  """

  g0_norm: jax.Array
  g1_norm: jax.Array
  g_slow_norm: jax.Array
  cos_g0_g1: jax.Array
  cos_g0_g_slow: jax.Array
  r_mean: jax.Array
  r_std: jax.Array
  scale_mean: jax.Array
  scale_max: jax.Array
  reposition_ratio: jax.Array
  gate_z: jax.Array


def _empty_diagnostics(g0_norm=None) -> GxpoDiagnostics:
  return c.empty_diagnostics(GxpoDiagnostics, g0_norm)


class GxpoState(NamedTuple):
  """State of `gxpo`; a pytree, so checkpoints hold the gate and the counts.

  Attributes:
    count: calls to `update`.
    active: False once the gate tripped (then every call is one plain step).
    gate: EMA statistics of ||g_slow||.
    backward_passes: cumulative backward passes, counting the caller's g0.
    step_backward_passes: backward passes of the last call (3 while active, 1 after).
    fallbacks: cumulative fallback calls (PAPERS.md §3 "Fallback").
    fallback_code: reason of the last call's fallback, 0 if none (see `_common`).
    shutoff_count: value of `count` at the call that tripped the gate, -1 before.
    diagnostics: see `GxpoDiagnostics`.
    inner_state: state of the wrapped optimizer.
  """

  count: jax.Array
  active: jax.Array
  gate: GateState
  backward_passes: jax.Array
  step_backward_passes: jax.Array
  fallbacks: jax.Array
  fallback_code: jax.Array
  shutoff_count: jax.Array
  diagnostics: GxpoDiagnostics
  inner_state: optax.OptState


class GxpoPoint(NamedTuple):
  """The extrapolated point th~ and what produced it."""

  params: Any  # th~
  inner_state: Any  # inner state after the two probe steps
  g1: Any
  retention: Any
  scale: Any
  direction: Any  # th2 - th0 as the sum of the two inner updates


def _reposition(
  params,
  g0,
  probe: c.InnerStep,
  g1,
  *,
  inner,
  k,
  alpha,
  delta,
  max_grad_norm,
  retention_from,
  extra,
) -> GxpoPoint:
  """Pass 2's optimizer step, retention, scale and th~ = th0 + alpha scale (th2 - th0)."""
  step2 = c.inner_step(
    inner, g1, probe.inner_state, probe.params, max_grad_norm=max_grad_norm, extra=extra
  )
  if retention_from == 'consumed':
    r = retention(probe.consumed, step2.consumed, delta=delta)
  else:
    r = retention(g0, g1, delta=delta)
  scale = extrapolation_scale(r, k=k, delta=delta)
  dt = c.stat_dtype(params)
  # th2 - th0 as u0 + u1: subtracting parameters would cancel digits when |th| >> |u|.
  direction = jax.tree.map(
    lambda u0, u1: u0.astype(dt) + u1.astype(dt), probe.updates, step2.updates
  )
  shift = jax.tree.map(lambda s, d: alpha * s.astype(dt) * d, scale, direction)
  tilde = jax.tree.map(lambda p, s: (p.astype(dt) + s).astype(p.dtype), params, shift)
  return GxpoPoint(tilde, step2.inner_state, g1, r, scale, direction)


def gxpo_point(
  params: Any,
  g0: Any,
  inner_state: Any,
  *,
  grad_fn: Callable[[Any], Any],
  inner: optax.GradientTransformation,
  k: int,
  alpha: float = 1.0,
  delta: float = 1e-8,
  max_grad_norm: float | None = None,
  retention_from: str = 'consumed',
  extra: dict[str, Any] | None = None,
) -> GxpoPoint:
  """GXPO's repositioned point th~ from two probe steps (PAPERS.md §3), no fallback or gate.

  With alpha = 1 this is GXPO's estimate of the K-step lookahead point th_K; the
  surrogate analysis compares it with `lookahead_point`.

  Args:
    params: th0.
    g0: raw gradient at th0.
    inner_state: state of `inner` at th0.
    grad_fn: params -> raw gradients on the same mini-batch (called once, at th1).
    inner: the optimizer.
    k: lookahead horizon K >= 2.
    alpha: reposition factor.
    delta: magnitude floor of g0 in the retention ratio.
    max_grad_norm: clip before `inner`, or None.
    retention_from: 'consumed' (post-clip) or 'raw' gradients.
    extra: extra keyword arguments for `inner.update`.

  Returns:
    A `GxpoPoint`.
  """
  inner = c.as_inner(inner, 'gxpo_point')
  k = c.check_static_int(k, 'k', 'gxpo_point', 2)
  c.check_choice(retention_from, 'retention_from', 'gxpo_point', c.RETENTIONS)
  extra = extra or {}
  probe = c.inner_step(inner, g0, inner_state, params, max_grad_norm=max_grad_norm, extra=extra)
  g1 = grad_fn(probe.params)
  return _reposition(
    params,
    g0,
    probe,
    g1,
    inner=inner,
    k=k,
    alpha=alpha,
    delta=delta,
    max_grad_norm=max_grad_norm,
    retention_from=retention_from,
    extra=extra,
  )


def _mean_std_max(tree) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean, std and max over every coordinate, from per-leaf reductions (no flattened copy
  of the parameters, so sharded leaves stay sharded)."""
  leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(tree)]
  n = sum(x.size for x in leaves)
  mean = sum(jnp.sum(x) for x in leaves) / n
  var = sum(jnp.sum(jnp.square(x - mean)) for x in leaves) / n
  top = jnp.max(jnp.stack([jnp.max(x) for x in leaves]))
  return mean, jnp.sqrt(var), top


class _Branch(NamedTuple):
  """What every branch of one call returns (identical types across `lax.cond`)."""

  updates: Any
  inner_state: Any
  diagnostics: GxpoDiagnostics
  passes: jax.Array
  code: jax.Array
  observed: jax.Array  # whether g_slow was measured and feeds the gate
  h: jax.Array  # ||g_slow|| before clipping
  done: jax.Array  # False: the call ends with one plain step


def gxpo(
  inner: optax.GradientTransformation,
  *,
  k: int = 10,
  alpha: float = 0.3,
  tau: float = 2.0,
  omega: float = 0.1,
  delta: float = 1e-8,
  max_grad_norm: float | None = 1.0,
  retention: str = 'consumed',
  state_mode: str = 'advance',
) -> optax.GradientTransformationExtraArgs:
  """GXPO as the outermost transformation around any optax optimizer (PAPERS.md §3).

  Call: `update(g0, state, params, *, grad_fn, entropy=None, **extra)`, g0 the raw
  gradient at `params` and `grad_fn(params) -> raw grads` on the same mini-batch (called
  for g1 and g_slow only). While active a call costs 3 backward passes counting g0; after
  the gate trips, `lax.cond` runs only the plain branch, so a call costs exactly g0's pass.
  Unknown extra keyword arguments are forwarded to `inner.update`.

  State modes:
    'advance' (default): pass 3 steps from the inner state after both probe steps, so the
      inner count, and any schedule inside `inner`, advances once per inner step: by 3 per
      call while active, by 1 after shutoff (a trainer sizing a schedule in trainer steps
      must count inner steps, e.g. from `backward_passes`, or use 'transactional').
    'transactional': the inner state is snapshotted before pass 1 and restored before
      pass 3, so the inner count advances by 1 per call.

  Fallback (checked in order on global norms): g0 non-finite; ||g0|| <= 1e-8; g1
  non-finite; g_slow non-finite. It restores th0 and the inner state and takes one plain
  step with g0 (no extra pass); a non-finite g0 skips the step (zero updates). Fallback
  calls do not feed the gate.

  Args:
    inner: any optax optimizer; the clip is `max_grad_norm`, not part of `inner`.
    k: lookahead horizon K >= 2 (a Python int; static under inject_hyperparams).
    alpha: reposition factor in [0, 1].
    tau: gate threshold on the one-sided z-score of ||g_slow||.
    omega: EMA weight of the gate statistics.
    delta: magnitude floor of g0 in the retention ratio (and of |S_2|).
    max_grad_norm: global-norm clip before `inner` (optax semantics), or None.
    retention: 'consumed' (post-clip, default) or 'raw' gradients for r.
    state_mode: 'advance' (default) or 'transactional'.

  Returns:
    An `optax.GradientTransformationExtraArgs`; apply with `optax.apply_updates`.
  """
  inner = c.as_inner(inner, 'gxpo')
  k = c.check_static_int(k, 'k', 'gxpo', 2)
  c.check_number(alpha, 'alpha', 'gxpo', lo=0.0, hi=1.0)
  c.check_number(tau, 'tau', 'gxpo')
  c.check_number(omega, 'omega', 'gxpo', lo=0.0, hi=1.0)
  c.check_number(delta, 'delta', 'gxpo', lo=0.0)
  c.check_positive_or_none(max_grad_norm, 'max_grad_norm', 'gxpo')
  c.check_choice(retention, 'retention', 'gxpo', c.RETENTIONS)
  c.check_choice(state_mode, 'state_mode', 'gxpo', c.STATE_MODES)

  def init_fn(params):
    zero = jnp.zeros([], jnp.int32)
    return GxpoState(
      count=zero,
      active=jnp.asarray(True),
      gate=gate_init(),
      backward_passes=zero,
      step_backward_passes=zero,
      fallbacks=zero,
      fallback_code=zero,
      shutoff_count=jnp.full([], -1, jnp.int32),
      diagnostics=_empty_diagnostics(),
      inner_state=inner.init(params),
    )

  def update_fn(
    updates: Any,
    state: GxpoState,
    params: Any = None,
    *,
    grad_fn: Callable | None = None,
    entropy: Any = None,
    **extra: Any,
  ):
    del entropy
    c.check_call('gxpo', params, grad_fn)
    g0, s0 = updates, state.inner_state
    g0_norm = c.global_norm(g0).astype(jnp.float32)
    i32 = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731

    def unfinished(passes, code):
      """A branch that leaves the step to the one plain step below (fallback or shutoff)."""

      def run(_):
        return _Branch(
          updates=c.zeros_like_updates(g0),
          inner_state=s0,
          diagnostics=_empty_diagnostics(g0_norm),
          passes=i32(passes),
          code=i32(code),
          observed=jnp.asarray(False),
          h=c.nan(),
          done=jnp.asarray(False),
        )

      return run

    def slow_branch(point: GxpoPoint, g_slow, g_slow_norm):
      def run(_):
        s_slow = point.inner_state if state_mode == 'advance' else s0
        step3 = c.inner_step(
          inner, g_slow, s_slow, point.params, max_grad_norm=max_grad_norm, extra=extra
        )
        r_mean, r_std, _ = _mean_std_max(point.retention)
        scale_mean, _, scale_max = _mean_std_max(point.scale)
        scaled = jax.tree.map(lambda s, d: s.astype(d.dtype) * d, point.scale, point.direction)
        dnorm = c.global_norm(point.direction)
        ratio = jnp.where(dnorm > 0, c.global_norm(scaled) / jnp.where(dnorm > 0, dnorm, 1), 1)
        diag = GxpoDiagnostics(
          g0_norm=g0_norm,
          g1_norm=c.global_norm(point.g1),
          g_slow_norm=g_slow_norm,
          cos_g0_g1=c.cosine(g0, point.g1),
          cos_g0_g_slow=c.cosine(g0, g_slow),
          r_mean=r_mean,
          r_std=r_std,
          scale_mean=scale_mean,
          scale_max=scale_max,
          reposition_ratio=ratio,
          gate_z=c.nan(),
        )
        return _Branch(
          updates=c.displacement(step3.params, params, g0),
          inner_state=c.cast_like(step3.inner_state, s0),
          diagnostics=c.cast_like(diag, _empty_diagnostics()),
          passes=i32(3),
          code=i32(c.FALLBACK_NONE),
          observed=jnp.asarray(True),
          h=g_slow_norm,
          done=jnp.asarray(True),
        )

      return run

    def after_g1(probe: c.InnerStep, g1):
      def run(_):
        point = _reposition(
          params,
          g0,
          probe,
          g1,
          inner=inner,
          k=k,
          alpha=alpha,
          delta=delta,
          max_grad_norm=max_grad_norm,
          retention_from=retention,
          extra=extra,
        )
        g_slow = grad_fn(point.params)  # pass 3
        g_slow_norm = c.global_norm(g_slow).astype(jnp.float32)
        return jax.lax.cond(
          c.all_finite(g_slow),
          slow_branch(point, g_slow, g_slow_norm),
          unfinished(3, c.FALLBACK_G_SLOW_NONFINITE),
          None,
        )

      return run

    def probe_branch(_):
      probe = c.inner_step(inner, g0, s0, params, max_grad_norm=max_grad_norm, extra=extra)
      g1 = grad_fn(probe.params)  # pass 2
      return jax.lax.cond(
        c.all_finite(g1), after_g1(probe, g1), unfinished(2, c.FALLBACK_G1_NONFINITE), None
      )

    g0_finite = c.all_finite(g0)

    def active_branch(_):
      ok = g0_finite & (g0_norm > c.MIN_G0_NORM)
      code = jnp.where(g0_finite, c.FALLBACK_G0_SMALL, c.FALLBACK_G0_NONFINITE)
      return jax.lax.cond(ok, probe_branch, unfinished(1, code), None)

    # After shutoff: one plain step; a non-finite g0 is skipped and reported with its code.
    inactive_code = jnp.where(g0_finite, c.FALLBACK_NONE, c.FALLBACK_G0_NONFINITE)
    out = jax.lax.cond(state.active, active_branch, unfinished(1, inactive_code), None)

    # Every fallback and every call after shutoff is the same plain step with g0 from th0 and
    # the inner state before the call, so the program holds it once.
    def plain_step(_):
      u, s, _ = c.plain_or_skip(inner, g0, s0, params, max_grad_norm=max_grad_norm, extra=extra)
      return u, s

    new_updates, inner_state = jax.lax.cond(
      out.done, lambda _: (out.updates, out.inner_state), plain_step, None
    )
    out = out._replace(updates=new_updates, inner_state=inner_state)

    gate, z, trip = gate_update(state.gate, out.h, tau=tau, omega=omega)
    gate = jax.tree.map(lambda new, old: jnp.where(out.observed, new, old), gate, state.gate)
    trip = out.observed & trip
    active = state.active & jnp.logical_not(trip)
    diagnostics = out.diagnostics._replace(gate_z=jnp.where(out.observed, z, jnp.nan))
    is_fallback = state.active & (out.code != c.FALLBACK_NONE)  # skips after shutoff are not
    new_state = GxpoState(
      count=optax.safe_increment(state.count),
      active=active,
      gate=gate,
      backward_passes=state.backward_passes + out.passes,
      step_backward_passes=out.passes,
      fallbacks=state.fallbacks + is_fallback.astype(jnp.int32),
      fallback_code=out.code,
      shutoff_count=jnp.where(trip, state.count, state.shutoff_count).astype(jnp.int32),
      diagnostics=c.cast_like(diagnostics, state.diagnostics),
      inner_state=c.cast_like(out.inner_state, s0),
    )
    return out.updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)

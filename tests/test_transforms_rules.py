"""GXPO, SFPO and lookahead semantics: exactness, gates, fallbacks and pass counts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpo_jax import transforms as T
from grpo_jax.transforms import _common

# ---------------------------------------------------------------- retention and scale


def test_retention_signs_floors_clamps_and_non_finite_entries_by_hand():
  g0 = jnp.array([2.0, -0.0, 1e-9, 1.0, -4.0])
  g1 = jnp.array([1.0, 3.0, -1.0, jnp.nan, 2.0])
  r = T.retention(g0, g1, delta=1e-8)
  # 1/2; -0.0 counts as +, floored to 1e-8 -> 3e8 -> 3; -1/1e-8 -> -2; NaN -> 1; 2/-4.
  np.testing.assert_array_equal(r, [0.5, 3.0, -2.0, 1.0, -0.5])


def test_scale_is_s_k_over_s_2_clamped_by_hand():
  r = jnp.array([0.5, 3.0, 1.0, -1.0, -2.0, 0.0])
  s = T.extrapolation_scale(r, k=4, delta=1e-8)
  # S_4/S_2: 1.875/1.5; 40/4 -> clamp K/2+1 = 3; K/2 = 2; S_2 = 0 -> 1; -5/-1 -> 3; 1.
  np.testing.assert_allclose(s, [1.25, 3.0, 2.0, 1.0, 3.0, 1.0], rtol=1e-6)


def test_partial_sum_matches_the_power_series_in_float64():
  with jax.enable_x64(True):
    r = jnp.linspace(-2.0, 3.0, 41)
    for n in (2, 3, 10):
      ref = sum(np.asarray(r) ** i for i in range(n))
      np.testing.assert_allclose(T.partial_sum(r, n), ref, rtol=1e-13, atol=1e-13)


_values = st.one_of(
  st.floats(-1e3, 1e3, allow_nan=False, width=32),
  st.sampled_from([0.0, -0.0, 1e-9, -1e-9, np.inf, -np.inf, np.nan]),
)


@given(
  st.lists(_values, min_size=8, max_size=8),
  st.lists(_values, min_size=8, max_size=8),
  st.sampled_from([2, 3, 10]),
)
def test_retention_and_scale_match_a_numpy_reference(g0, g1, k):
  g0, g1 = np.array(g0, np.float32), np.array(g1, np.float32)
  with np.errstate(all='ignore'):
    g0s = np.where(g0 >= 0, 1.0, -1.0).astype(np.float32) * np.maximum(np.abs(g0), 1e-8)
    r = np.clip(g1 / g0s.astype(np.float32), -2, 3)  # float32 division, as the library
    r = np.where(np.isfinite(r), r, 1.0)
    s_k = sum(r**i for i in range(k))
    scale = np.where(np.abs(1 + r) > 1e-8, np.clip(s_k / (1 + r), 1, k / 2 + 1), 1.0)
  got_r = T.retention(jnp.asarray(g0), jnp.asarray(g1))
  np.testing.assert_allclose(got_r, r, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(T.extrapolation_scale(got_r, k=k), scale, rtol=1e-5)


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize('k', [3, 5, 10])
def test_corollary_2_one_gxpo_step_is_k_plus_1_gd_steps(k):
  with jax.enable_x64(True):
    rng = np.random.default_rng(k)
    h = jnp.asarray(rng.uniform(0.05, 1.0, 20))  # eta h <= 1 with eta = 1
    h = h.at[0].set(1.0)  # eta h = 1 exactly: r = 0
    theta0 = {'x': jnp.asarray(rng.uniform(0.5, 2.0, 20) * rng.choice([-1, 1], 20))}
    grad_fn = jax.grad(lambda p: 0.5 * jnp.sum(h * p['x'] ** 2))
    tx = T.gxpo(optax.sgd(1.0), k=k, alpha=1.0, max_grad_norm=None)
    updates, state = jax.jit(functools.partial(tx.update, grad_fn=grad_fn))(
      grad_fn(theta0), tx.init(theta0), theta0
    )
    got = optax.apply_updates(theta0, updates)['x']
    ref = np.asarray(theta0['x'])
    for _ in range(k + 1):  # K+1 gradient-descent steps, in numpy
      ref = ref - np.asarray(h) * ref
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    assert int(state.step_backward_passes) == 3


@pytest.mark.parametrize('rule', ['sfpo', 'lookahead'])
@pytest.mark.parametrize('k', [1, 3])
def test_alpha_1_is_k_plus_1_plain_steps_on_a_non_quadratic_loss(rule, k):
  with jax.enable_x64(True):
    target = jnp.array([0.3, -1.2, 2.0])

    def loss(p):
      d = p['x'] - target
      return jnp.sum(jnp.log(jnp.cosh(d)) + 0.1 * d**4) + jnp.sin(p['x'][0] * p['x'][1])

    grad_fn = jax.grad(loss)
    inner = optax.adamw(0.05, weight_decay=0.01)
    params = {'x': jnp.array([1.0, 0.5, -0.5])}
    if rule == 'sfpo':
      tx = T.sfpo(inner, k=k, alpha=1.0, max_grad_norm=1.0, window=3)
    else:
      tx = T.lookahead(inner, k=k, alpha=1.0, max_grad_norm=1.0)
    ref_tx = T.plain(inner, max_grad_norm=1.0)
    step = jax.jit(functools.partial(tx.update, grad_fn=grad_fn, entropy=jnp.float64(1.0)))
    ref_step = jax.jit(ref_tx.update)
    p, s = params, tx.init(params)
    q, rs = params, ref_tx.init(params)
    for _ in range(2):  # two calls: the inner (Adam) state carries over between calls
      u, s = step(grad_fn(p), s, p)
      p = optax.apply_updates(p, u)
      for _ in range(k + 1):
        u, rs = ref_step(grad_fn(q), rs, q)
        q = optax.apply_updates(q, u)
    np.testing.assert_allclose(p['x'], q['x'], rtol=0, atol=1e-12)
    assert int(s.backward_passes) == 2 * (k + 1)


def test_gxpo_with_alpha_1_equals_the_exact_lookahead_on_a_diagonal_quadratic():
  with jax.enable_x64(True):
    h = jnp.array([0.9, 0.4, 0.1])
    grad_fn = jax.grad(lambda p: 0.5 * jnp.sum(h * p**2))
    theta0 = jnp.array([1.0, -2.0, 0.5])
    inner = optax.sgd(1.0)
    s0 = inner.init(theta0)
    point = jax.jit(
      lambda th: T.gxpo_point(th, grad_fn(th), s0, grad_fn=grad_fn, inner=inner, k=5)
    )(theta0)
    exact, _ = jax.jit(
      lambda th: T.lookahead_point(th, grad_fn(th), s0, grad_fn=grad_fn, inner=inner, k=5)
    )(theta0)
    np.testing.assert_allclose(point.params, exact, rtol=0, atol=1e-14)
    np.testing.assert_allclose(exact, theta0 * (1 - h) ** 5, rtol=0, atol=1e-14)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize('mode, inner_steps', [('advance', 3), ('transactional', 1)])
def test_state_mode_sets_how_far_the_inner_count_and_schedule_advance(mode, inner_steps):
  inner = optax.adam(lambda count: 0.1 / (1.0 + count))
  grad_fn = jax.grad(lambda p: jnp.sum((p - 1.0) ** 2))
  p = jnp.zeros(3)
  tx = T.gxpo(inner, k=3, alpha=0.5, state_mode=mode)
  state = tx.init(p)
  step = jax.jit(functools.partial(tx.update, grad_fn=grad_fn))
  for _ in range(2):
    u, state = step(grad_fn(p), state, p)
    p = optax.apply_updates(p, u)
  adam_state, schedule_state = state.inner_state
  assert int(adam_state.count) == 2 * inner_steps
  assert int(schedule_state.count) == 2 * inner_steps


def test_transactional_slow_step_uses_the_snapshot_inner_state():
  # With momentum the slow step differs: transactional starts from an empty trace, advance
  # from the trace the two probe steps built.
  grad_fn = jax.grad(lambda p: jnp.sum((p - 1.0) ** 2))
  p = jnp.zeros(2)
  make = lambda: optax.sgd(0.1, momentum=0.9)  # noqa: E731
  got = {}
  for mode in ('advance', 'transactional'):
    tx = T.gxpo(make(), k=3, alpha=0.5, state_mode=mode)
    got[mode] = jax.jit(functools.partial(tx.update, grad_fn=grad_fn))(grad_fn(p), tx.init(p), p)[0]
  inner = make()

  @jax.jit
  def reference(p):
    point = T.gxpo_point(
      p, grad_fn(p), inner.init(p), grad_fn=grad_fn, inner=inner, k=3, alpha=0.5, max_grad_norm=1
    )
    clipped = _common.consume(grad_fn(point.params), 1.0)
    fresh, _ = inner.update(clipped, inner.init(p), point.params)
    advanced, _ = inner.update(clipped, point.inner_state, point.params)
    return point.params + fresh - p, point.params + advanced - p

  transactional, advance = reference(p)
  np.testing.assert_allclose(got['transactional'], transactional, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got['advance'], advance, rtol=1e-6, atol=1e-7)
  assert float(jnp.max(jnp.abs(got['advance'] - got['transactional']))) > 1e-2


def test_consumed_retention_is_raw_retention_times_the_clip_ratio():
  # g = 4 (p - 1): ||g0|| and ||g1|| exceed the clip, so each is scaled by c / ||g||.
  grad_fn = jax.grad(lambda p: 2.0 * jnp.sum((p - 1.0) ** 2))
  p = jnp.array([0.0, 3.0, -2.0])
  g0 = grad_fn(p)
  kw = dict(grad_fn=grad_fn, inner=optax.sgd(0.1), k=3, max_grad_norm=0.5)
  s0 = optax.sgd(0.1).init(p)
  raw, consumed = jax.jit(
    lambda p: [T.gxpo_point(p, g0, s0, retention_from=r, **kw) for r in ('raw', 'consumed')]
  )(p)
  ratio = optax.tree.norm(g0) / optax.tree.norm(raw.g1)  # (c/||g1||) / (c/||g0||)
  np.testing.assert_allclose(consumed.retention, raw.retention * ratio, rtol=1e-5)
  assert float(ratio) > 1.0


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match='`gxpo\\(k=...\\)` must be >= 2'):
    T.gxpo(optax.sgd(0.1), k=1)
  with pytest.raises(TypeError, match="static_args=\\('k',\\)"):
    T.gxpo(optax.sgd(0.1), k=jnp.asarray(3))
  with pytest.raises(ValueError, match='state_mode'):
    T.gxpo(optax.sgd(0.1), state_mode='restore')
  with pytest.raises(ValueError, match='alpha'):
    T.sfpo(optax.sgd(0.1), alpha=1.5)
  with pytest.raises(TypeError, match='optax.GradientTransformation'):
    T.lookahead(lambda g: g, k=2)
  tx = T.gxpo(optax.sgd(0.1))
  with pytest.raises(ValueError, match='grad_fn'):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2))


def test_sfpo_without_entropy_raises():
  tx = T.sfpo(optax.sgd(0.1))
  p = jnp.ones(2)
  with pytest.raises(ValueError, match='needs the keyword argument `entropy`'):
    tx.update(p, tx.init(p), p, grad_fn=lambda q: q)
  with pytest.raises(ValueError, match='must be a scalar'):
    tx.update(p, tx.init(p), p, grad_fn=lambda q: q, entropy=jnp.ones(3))


# ---------------------------------------------------------------- gates and pass counts


class Counter:
  """Counts real executions of grad_fn through a host callback."""

  def __init__(self):
    self.n = 0

  def bump(self):
    self.n += 1

  def read(self):
    jax.effects_barrier()
    return self.n


def counted(grad_fn, counter):
  def fn(p):
    jax.debug.callback(counter.bump)
    return grad_fn(p)

  return fn


def test_gate_statistics_by_hand():
  gate = T.gate_init()
  # omega = 0.5. H = 3: z = (3-1)/1 = 2; sigma^2 = .5 + .5*4 = 2.5; mu = 2; no trip (1st obs).
  gate, z, trip = T.gate_update(gate, 3.0, tau=2.0, omega=0.5)
  np.testing.assert_allclose([z, gate.mu, gate.sigma], [2.0, 2.0, np.sqrt(2.5)], rtol=1e-6)
  assert not bool(trip)
  # H = 2: z = 0; sigma^2 = 1.25; mu = 2.
  gate, z, trip = T.gate_update(gate, 2.0, tau=2.0, omega=0.5)
  np.testing.assert_allclose([z, gate.mu, gate.sigma], [0.0, 2.0, np.sqrt(1.25)], atol=1e-6)
  # H = 5: z = 3/sqrt(1.25) = 2.683 >= 2: the third observation trips; stats still update.
  gate, z, trip = T.gate_update(gate, 5.0, tau=2.0, omega=0.5)
  np.testing.assert_allclose(z, 3.0 / np.sqrt(1.25), rtol=1e-6)
  np.testing.assert_allclose([gate.mu, gate.sigma], [3.5, np.sqrt(0.625 + 4.5)], rtol=1e-6)
  assert bool(trip) and int(gate.n_obs) == 3
  # sigma is floored at 0.01.
  flat, _, _ = T.gate_update(
    T.GateState(jnp.float32(1), jnp.float32(0), jnp.int32(5)), 1.0, tau=2.0, omega=0.1
  )
  np.testing.assert_allclose(flat.sigma, 0.01, rtol=1e-6)


def test_gxpo_gate_scores_g_slow_norm_and_the_first_two_observations_never_trip():
  # grad_fn returns a constant vector per call, so ||g_slow|| = H_t exactly.
  tx = T.gxpo(optax.sgd(0.1), k=3, alpha=0.5, tau=2.0, omega=0.5, max_grad_norm=None)
  p = jnp.zeros(2)

  @jax.jit
  def step(state, h):
    g = jnp.array([h, 0.0])
    return tx.update(g, state, p, grad_fn=lambda q: g)[1]

  state = tx.init(p)
  for h, active in [(100.0, True), (100.0, True), (2.0, True), (400.0, False)]:
    state = step(state, h)
    assert bool(state.active) == active
  # By hand with omega = 0.5: mu 1 -> 50.5 -> 75.25 -> 38.625; the 4th z is (400-38.625)/sigma.
  np.testing.assert_allclose(state.gate.mu, 0.5 * 38.625 + 200.0, rtol=1e-6)
  assert int(state.gate.n_obs) == 4 and int(state.shutoff_count) == 3


def test_gxpo_gate_trips_on_a_spike_and_then_costs_one_pass_per_step_for_good():
  counter = Counter()
  base = jax.grad(lambda p: 0.5 * jnp.sum((p - 1.0) ** 2))
  tx = T.gxpo(optax.sgd(0.1), k=10, alpha=0.3, tau=2.0)

  @jax.jit
  def step(p, state, spike):
    fn = counted(lambda q: spike * base(q), counter)
    updates, state = tx.update(spike * base(p), state, p, grad_fn=fn)
    return optax.apply_updates(p, updates), state

  p, state = jnp.zeros(4), tx.init(jnp.zeros(4))
  calls, passes, active = [], [], []
  for i in range(12):
    before = counter.read()
    p, state = step(p, state, jnp.float32(1e3 if i == 6 else 1.0))
    calls.append(counter.read() - before)
    passes.append(int(state.step_backward_passes))
    active.append(bool(state.active))
  assert active == [True] * 6 + [False] * 6
  assert calls == [2] * 7 + [0] * 5  # the tripping call keeps its extrapolated step
  assert passes == [3] * 7 + [1] * 5
  assert int(state.backward_passes) == 3 * 7 + 5
  assert int(state.shutoff_count) == 6
  assert np.all(np.isfinite(np.asarray(p)))


def test_sfpo_trigger_trips_on_an_entropy_spike_and_that_call_is_plain():
  counter = Counter()
  grad_fn = jax.grad(lambda p: 0.5 * jnp.sum((p - 1.0) ** 2))
  tx = T.sfpo(optax.sgd(0.1), k=3, alpha=0.8, tau=1.0, window=4)

  @jax.jit
  def step(p, state, entropy):
    updates, state = tx.update(
      grad_fn(p), state, p, grad_fn=counted(grad_fn, counter), entropy=entropy
    )
    return optax.apply_updates(p, updates), state

  p, state = jnp.zeros(2), tx.init(jnp.zeros(2))
  entropies = [1.0, 1.1, 0.9, 1.0, 1.05, 3.0, 1.0, 1.0]
  calls, zs = [], []
  for e in entropies:
    before = counter.read()
    p, state = step(p, state, jnp.float32(e))
    calls.append(counter.read() - before)
    zs.append(float(state.diagnostics.entropy_z))
  assert calls == [3] * 5 + [0] * 3  # K grad_fn calls (K-1 fast + slow) while active
  window = np.array([0.9, 1.0, 1.05, 3.0])  # z of the 6th call over its last W = 4 values
  np.testing.assert_allclose(zs[5], (3.0 - window.mean()) / window.std(), rtol=1e-5)
  assert np.isnan(zs[:3]).all()  # fewer than W entropies: no score
  assert int(state.shutoff_count) == 5 and not bool(state.active)


def test_sfpo_alpha_0_is_one_plain_step():
  counter = Counter()
  grad_fn = jax.grad(lambda p: 0.5 * jnp.sum((p - 1.0) ** 2))
  tx = T.sfpo(optax.sgd(0.1), k=3, alpha=0.0, max_grad_norm=None)
  p = jnp.zeros(2)
  u, state = jax.jit(
    functools.partial(tx.update, grad_fn=counted(grad_fn, counter), entropy=jnp.float32(1))
  )(grad_fn(p), tx.init(p), p)
  np.testing.assert_allclose(u, -0.1 * grad_fn(p), rtol=1e-6)
  assert counter.read() == 0 and int(state.step_backward_passes) == 1


# ---------------------------------------------------------------- fallbacks


@pytest.mark.parametrize(
  'bad_at, code, grad_calls, bad',
  [
    (0, _common.FALLBACK_G0_NONFINITE, 0, np.nan),
    (1, _common.FALLBACK_G1_NONFINITE, 1, np.inf),
    (2, _common.FALLBACK_G_SLOW_NONFINITE, 2, np.nan),
    (2, _common.FALLBACK_G_SLOW_NONFINITE, 2, -np.inf),
  ],
)
def test_gxpo_non_finite_gradient_falls_back_to_one_plain_step(bad_at, code, grad_calls, bad):
  counter = Counter()
  base = jax.grad(lambda p: 0.5 * jnp.sum((p - 1.0) ** 2))
  calls = []

  def grad_fn(p):  # the grad_fn call number is known at trace time: pass 1 and pass 2
    calls.append(1)
    g = base(p)
    return g.at[0].set(bad) if len(calls) == bad_at else g

  tx = T.gxpo(optax.adam(0.1), k=3, alpha=0.5)
  p = jnp.array([0.0, 2.0])
  state = tx.init(p)
  g0 = base(p).at[0].set(bad) if bad_at == 0 else base(p)
  u, new = jax.jit(functools.partial(tx.update, grad_fn=counted(grad_fn, counter)))(g0, state, p)
  q = optax.apply_updates(p, u)
  assert np.all(np.isfinite(np.asarray(q)))
  assert int(new.fallback_code) == code and int(new.fallbacks) == 1
  assert counter.read() == grad_calls and int(new.step_backward_passes) == grad_calls + 1
  assert int(new.gate.n_obs) == 0 and bool(new.active)  # fallbacks do not feed the gate
  if bad_at == 0:  # skipped: nothing moves
    np.testing.assert_array_equal(q, p)
    assert int(new.inner_state[0].count) == 0
  else:  # one plain Adam step from th0 with g0 (clipped to norm 1)
    ref_tx = T.plain(optax.adam(0.1), max_grad_norm=1.0)
    ref, ref_state = ref_tx.update(g0, ref_tx.init(p), p)
    np.testing.assert_allclose(u, ref, rtol=1e-6)
    assert int(new.inner_state[0].count) == 1


def test_gxpo_tiny_g0_falls_back_without_extra_passes():
  counter = Counter()
  tx = T.gxpo(optax.sgd(0.1), k=3, alpha=0.5, max_grad_norm=None)
  p = jnp.ones(2)
  g0 = jnp.array([1e-9, 0.0])
  u, s = jax.jit(functools.partial(tx.update, grad_fn=counted(lambda q: q, counter)))(
    g0, tx.init(p), p
  )
  np.testing.assert_allclose(u, -0.1 * g0)
  assert int(s.fallback_code) == _common.FALLBACK_G0_SMALL and counter.read() == 0


@pytest.mark.parametrize('rule', ['sfpo', 'lookahead'])
def test_lookahead_non_finite_fast_gradient_falls_back(rule):
  counter = Counter()
  base = jax.grad(lambda p: 0.5 * jnp.sum((p - 1.0) ** 2))

  def grad_fn(p):  # non-finite once the iterate passes 0.25 (the 2nd fast step)
    g = base(p)
    return jnp.where(p[0] > 0.25, jnp.nan, 1.0) * g

  rule_fn = T.sfpo if rule == 'sfpo' else T.lookahead
  tx = rule_fn(optax.sgd(0.2), k=3, alpha=0.5, max_grad_norm=1.0)
  p = jnp.zeros(2)
  u, s = jax.jit(
    functools.partial(tx.update, grad_fn=counted(grad_fn, counter), entropy=jnp.float32(1))
  )(base(p), tx.init(p), p)
  np.testing.assert_allclose(u, -0.2 * base(p) / np.sqrt(2), rtol=1e-6)  # clipped to norm 1
  assert int(s.fallback_code) == _common.FALLBACK_FAST_NONFINITE
  assert counter.read() == 2 and int(s.step_backward_passes) == 3  # stopped at the bad pass


@pytest.mark.parametrize('rule', ['plain', 'gxpo'])
def test_plain_steps_with_non_finite_gradients_are_skipped(rule):
  # gxpo after shutoff behaves like plain: a non-finite gradient is skipped.
  tx = T.plain(optax.sgd(0.1)) if rule == 'plain' else T.gxpo(optax.sgd(0.1), k=3)
  p = jnp.ones(2)
  state = tx.init(p)
  if rule == 'gxpo':
    state = state._replace(active=jnp.asarray(False))
  u, s = jax.jit(functools.partial(tx.update, grad_fn=lambda q: q))(
    jnp.array([jnp.inf, 1.0]), state, p
  )
  np.testing.assert_array_equal(u, jnp.zeros(2))
  assert int(s.step_backward_passes) == 1


# ---------------------------------------------------------------- metrics


def test_rule_metrics_exposes_the_diagnostics_through_inject_hyperparams():
  grad_fn = jax.grad(lambda p: 0.5 * jnp.sum((p - 1.0) ** 2))
  tx = optax.inject_hyperparams(T.gxpo, static_args=('k',))(
    inner=optax.sgd(0.1), k=3, max_grad_norm=None
  )
  p = jnp.array([0.0, 3.0])
  _, state = jax.jit(functools.partial(tx.update, grad_fn=grad_fn))(grad_fn(p), tx.init(p), p)
  m = jax.jit(T.rule_metrics)(state)
  for key in (
    'g0_norm',
    'g1_norm',
    'g_slow_norm',
    'cos_g0_g1',
    'cos_g0_g_slow',
    'r_mean',
    'r_std',
    'scale_mean',
    'scale_max',
    'reposition_ratio',
    'gate_z',
    'active',
  ):
    assert f'rule/{key}' in m
  np.testing.assert_allclose(m['rule/g0_norm'], np.sqrt(1 + 4), rtol=1e-6)
  np.testing.assert_allclose(m['rule/cos_g0_g1'], 1.0, rtol=1e-6)  # isotropic: same direction
  # Unit Hessian, sgd(0.1), no clip: g1 = 0.9 g0 in every coordinate.
  np.testing.assert_allclose([m['rule/r_mean'], m['rule/r_std']], [0.9, 0.0], atol=1e-6)
  assert float(m['rule/backward_passes']) == 3 and float(m['rule/active']) == 1
  plain_m = T.rule_metrics(T.plain(optax.sgd(0.1)).init(p))
  assert float(plain_m['rule/active']) == 0


def test_gxpo_scale_and_reposition_diagnostics_by_hand():
  # Diagonal h = (1, 0.5), sgd(0.5), no clip: r = 1 - 0.5 h = (0.5, 0.75).
  h = jnp.array([1.0, 0.5])
  grad_fn = jax.grad(lambda p: 0.5 * jnp.sum(h * p**2))
  tx = T.gxpo(optax.sgd(0.5), k=3, alpha=0.3, max_grad_norm=None)
  p = jnp.ones(2)
  _, state = jax.jit(functools.partial(tx.update, grad_fn=grad_fn))(grad_fn(p), tx.init(p), p)
  m = T.rule_metrics(state)
  scale = np.array([1.75 / 1.5, (1 + 0.75 + 0.5625) / 1.75])  # S_3 / S_2
  d = -0.5 * np.array([1.0, 0.5]) * np.array([1.5, 1.75])  # th2 - th0 = -eta g0 (1 + r)
  np.testing.assert_allclose(m['rule/scale_mean'], scale.mean(), rtol=1e-6)
  np.testing.assert_allclose(m['rule/scale_max'], scale.max(), rtol=1e-6)
  np.testing.assert_allclose(
    m['rule/reposition_ratio'], np.linalg.norm(scale * d) / np.linalg.norm(d), rtol=1e-6
  )
  np.testing.assert_allclose([m['rule/r_mean'], m['rule/r_std']], [0.625, 0.125], rtol=1e-6)

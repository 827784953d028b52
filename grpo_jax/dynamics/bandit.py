"""Softmax-bandit testbed for GRPO dynamics, with the exact expected gradient (PAPERS.md §5).

A arms with Bernoulli rewards ``p_a``; logits ``theta``, ``pi = softmax(theta)``. Each step
draws ``G`` arms per prompt (``B`` prompts) from the sampling policy ``pi_old``, which is
refreshed every ``d`` steps; advantages are GRPO's (std-normalised, ``ddof``) or mean-only;
the loss is the PPO-clipped surrogate with an optional k3 KL to a reference; the optimiser is
SGD with heavy-ball momentum or Adam.

Exact expectation. Given its arm ``a``, a sample's reward is Bernoulli(p_a) and the other
``G - 1`` rewards are i.i.d. Bernoulli(R_old). A reward-1 sample always has ``A >= 0`` and a
reward-0 sample ``A <= 0``, so with ``s_+ = E[A | r=1]``, ``s_- = -E[A | r=0]``
(``discrete.advantage_moments``) the expected clipped surrogate is, in closed form,

    J(theta) = sum_a pi_old(a) [p_a s_+ min(rho_a, 1+eps) - (1-p_a) s_- max(rho_a, 1-eps)]
               - beta_kl sum_a pi_old(a) k3_a(theta),

whose gradient without clipping is ``(s_+ + s_-) grad R = s(R_old, G) grad R`` (PAPERS.md §5).
Deterministic trajectories use ``grad J``; Monte Carlo draws the samples and is vmapped over
seeds. Sweeps pass momentum, learning rate, refresh interval, KL coefficient and group size
as arrays (:class:`Sweep`), so ``jax.vmap`` runs a whole grid in one compiled call.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.linalg import solve_discrete_lyapunov

from grpo_jax.dynamics import discrete


@dataclasses.dataclass(frozen=True)
class BanditConfig:
  """Static description of a bandit run (hyper-parameters that sweeps vary are in Sweep).

  Attributes:
    arm_means: Bernoulli success probability of each arm (A >= 2 entries in [0, 1]).
    n_prompts: groups per step (B); the gradient noise scales as 1 / (B G).
    advantage: 'std' (GRPO) or 'mean' (mean-only, Dr. GRPO).
    ddof: degrees of freedom of the group std (the presets' convention; PAPERS.md §5).
    adv_eps: added to the group std.
    clip_eps: PPO clip range (None disables the clip).
    ratio: True for the PPO ratio at the current parameters; False for a fully stale
      gradient evaluated at the sampling parameters (asynchronous / no-ratio updates).
    optimizer: 'sgd' (heavy-ball momentum) or 'adam' (momentum is Adam's b1).
    adam_b2: Adam's second-moment decay.
    steps: number of updates.
    g_max: largest group size a sweep may use (static bound of the binomial sum).
  """

  arm_means: tuple[float, ...]
  n_prompts: int = 1
  advantage: str = 'std'
  ddof: int = 1
  adv_eps: float = 0.0
  clip_eps: float | None = 0.2
  ratio: bool = True
  optimizer: str = 'sgd'
  adam_b2: float = 0.999
  steps: int = 200
  g_max: int = 64

  def __post_init__(self):
    p = np.asarray(self.arm_means, float)
    if p.ndim != 1 or p.size < 2 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
      raise ValueError(f'`arm_means` must be >= 2 probabilities in [0, 1], got {self.arm_means}')
    if self.advantage not in ('std', 'mean'):
      raise ValueError(f"`advantage` must be 'std' or 'mean', got {self.advantage!r}")
    if self.ddof not in (0, 1):
      raise ValueError(f'`ddof` must be 0 or 1, got {self.ddof}')
    if self.optimizer not in ('sgd', 'adam'):
      raise ValueError(f"`optimizer` must be 'sgd' or 'adam', got {self.optimizer!r}")
    if self.clip_eps is not None and not self.clip_eps > 0:
      raise ValueError(f'`clip_eps` must be > 0 or None, got {self.clip_eps}')
    for name in ('n_prompts', 'steps', 'g_max'):
      if int(getattr(self, name)) < 1:
        raise ValueError(f'`{name}` must be >= 1, got {getattr(self, name)}')


class Sweep(NamedTuple):
  """Hyper-parameters that may be arrays (vmapped in sweeps)."""

  lr: jax.Array | float = 0.1
  momentum: jax.Array | float = 0.0
  refresh: jax.Array | int = 1
  kl_coef: jax.Array | float = 0.0
  group_size: jax.Array | int = 8


def check_sweep(cfg: BanditConfig, hp: Sweep):
  """Host-side validation of concrete sweep values (raises a ValueError naming the field).

  Traced values (inside a user's ``jit``/``vmap``) cannot be inspected and are skipped.
  """
  if any(isinstance(v, jax.core.Tracer) for v in hp):
    return
  m = np.asarray(hp.momentum, float)
  if np.any(~np.isfinite(m)) or np.any(m < 0) or np.any(m >= 1):
    raise ValueError(f'`momentum` (beta) must lie in [0, 1), got {hp.momentum}')
  if np.any(np.asarray(hp.lr, float) <= 0):
    raise ValueError(f'`lr` must be > 0, got {hp.lr}')
  if np.any(np.asarray(hp.refresh) < 1):
    raise ValueError(f'`refresh` (d) must be >= 1, got {hp.refresh}')
  if np.any(np.asarray(hp.kl_coef, float) < 0):
    raise ValueError(f'`kl_coef` must be >= 0, got {hp.kl_coef}')
  g = np.asarray(hp.group_size)
  if np.any(g < 2) or np.any(g > cfg.g_max):
    raise ValueError(f'`group_size` must lie in [2, g_max={cfg.g_max}], got {hp.group_size}')


@functools.partial(jax.jit, static_argnums=0)
def expected_reward(cfg: BanditConfig, theta):
  """``R(theta) = sum_a softmax(theta)_a p_a``."""
  return jnp.sum(jax.nn.softmax(theta, axis=-1) * jnp.asarray(cfg.arm_means, theta.dtype), -1)


def _k3(theta, theta_ref):
  """k3 estimator ``pi_ref/pi - log(pi_ref/pi) - 1`` at every arm (PAPERS.md §1)."""
  log_ratio = jax.nn.log_softmax(theta_ref) - jax.nn.log_softmax(theta)
  return jnp.exp(log_ratio) - log_ratio - 1.0


def expected_objective(cfg: BanditConfig, theta, theta_old, theta_ref, hp: Sweep):
  """Exact expected GRPO objective (to maximise) at ``theta`` for sampler ``theta_old``."""
  p = jnp.asarray(cfg.arm_means, theta.dtype)
  logp_old = jax.nn.log_softmax(theta_old)
  pi_old = jnp.exp(logp_old)
  r_old = jnp.sum(pi_old * p)
  s_plus, s_minus = discrete.advantage_moments(
    r_old, hp.group_size, normalize=cfg.advantage, ddof=cfg.ddof, eps=cfg.adv_eps, g_max=cfg.g_max
  )
  rho = jnp.exp(jax.nn.log_softmax(theta) - logp_old)
  up = rho if cfg.clip_eps is None else jnp.minimum(rho, 1.0 + cfg.clip_eps)
  down = rho if cfg.clip_eps is None else jnp.maximum(rho, 1.0 - cfg.clip_eps)
  surrogate = jnp.sum(pi_old * (p * s_plus * up - (1.0 - p) * s_minus * down))
  kl = jnp.sum(pi_old * _k3(theta, theta_ref))
  return surrogate - hp.kl_coef * kl


@functools.partial(jax.jit, static_argnums=0)
def expected_gradient(cfg: BanditConfig, theta, theta_old, theta_ref, hp: Sweep):
  """Exact expected ascent direction; with ``cfg.ratio=False`` it is evaluated at ``theta_old``."""
  at = theta if cfg.ratio else theta_old
  return jax.grad(expected_objective, argnums=1)(cfg, at, theta_old, theta_ref, hp)


def sampled_objective(cfg: BanditConfig, theta, theta_old, theta_ref, hp: Sweep, key, group_size):
  """One Monte Carlo draw of the GRPO objective (B groups of ``group_size`` static samples)."""
  p = jnp.asarray(cfg.arm_means, theta.dtype)
  k_arm, k_rew = jax.random.split(key)
  logp_old = jax.nn.log_softmax(theta_old)
  arms_BG = jax.random.categorical(k_arm, logp_old, shape=(cfg.n_prompts, group_size))
  rewards_BG = jax.random.bernoulli(k_rew, p[arms_BG]).astype(theta.dtype)
  adv_BG = rewards_BG - rewards_BG.mean(-1, keepdims=True)
  if cfg.advantage == 'std':
    std_B1 = jnp.std(rewards_BG, axis=-1, ddof=cfg.ddof, keepdims=True)
    adv_BG = jnp.where(std_B1 > 0, adv_BG / jnp.where(std_B1 > 0, std_B1 + cfg.adv_eps, 1.0), 0.0)
  logp = jax.nn.log_softmax(theta)
  rho_BG = jnp.exp(logp[arms_BG] - logp_old[arms_BG])
  clipped = rho_BG if cfg.clip_eps is None else jnp.clip(rho_BG, 1 - cfg.clip_eps, 1 + cfg.clip_eps)
  surrogate_BG = jnp.minimum(rho_BG * adv_BG, clipped * adv_BG)
  kl_BG = _k3(theta, theta_ref)[arms_BG]
  return jnp.mean(surrogate_BG - hp.kl_coef * kl_BG)


@functools.partial(jax.jit, static_argnums=(0, 6))
def sampled_gradient(cfg: BanditConfig, theta, theta_old, theta_ref, hp: Sweep, key, group_size):
  """Monte Carlo ascent direction (see :func:`expected_gradient`)."""
  at = theta if cfg.ratio else theta_old
  return jax.grad(sampled_objective, argnums=1)(cfg, at, theta_old, theta_ref, hp, key, group_size)


def _optimizer(cfg: BanditConfig, hp: Sweep):
  if cfg.optimizer == 'sgd':
    return optax.sgd(learning_rate=hp.lr, momentum=hp.momentum)
  return optax.adam(learning_rate=hp.lr, b1=hp.momentum, b2=cfg.adam_b2)


class Trajectory(NamedTuple):
  """Per-step record of a run (index t = state before update t; entry ``steps`` is final)."""

  reward: jax.Array  # [steps + 1] expected reward R(theta_t)
  theta: jax.Array  # [steps + 1, A]


def _run(cfg, theta0, theta_ref, hp, key, group_size):
  opt = _optimizer(cfg, hp)

  def step(carry, t):
    theta, theta_old, opt_state, key = carry
    theta_old = jnp.where(t % hp.refresh == 0, theta, theta_old)
    if group_size is None:
      g = expected_gradient(cfg, theta, theta_old, theta_ref, hp)
    else:
      key, sub = jax.random.split(key)
      g = sampled_gradient(cfg, theta, theta_old, theta_ref, hp, sub, group_size)
    updates, opt_state = opt.update(jax.tree.map(jnp.negative, g), opt_state, theta)
    new = optax.apply_updates(theta, updates)
    return (new, theta_old, opt_state, key), theta

  carry = (theta0, theta0, opt.init(theta0), key)
  (theta_t, *_), thetas = jax.lax.scan(step, carry, jnp.arange(cfg.steps))
  thetas = jnp.concatenate([thetas, theta_t[None]], 0)
  return Trajectory(reward=expected_reward(cfg, thetas), theta=thetas)


_run_jit = jax.jit(_run, static_argnums=(0, 5))


def _prep(cfg, theta0, theta_ref):
  theta0 = jnp.asarray(theta0, jnp.result_type(float))
  if theta0.shape != (len(cfg.arm_means),):
    raise ValueError(f'`theta0` must have shape ({len(cfg.arm_means)},), got {theta0.shape}')
  theta_ref = theta0 if theta_ref is None else jnp.asarray(theta_ref, theta0.dtype)
  return theta0, theta_ref


def run_exact(cfg: BanditConfig, theta0, hp: Sweep, *, theta_ref=None) -> Trajectory:
  """Deterministic trajectory with the exact expected gradient (no sampling).

  ``hp`` fields may be scalars; to sweep, call under ``jax.vmap`` over ``hp`` (see
  :func:`sweep_exact`). ``theta_ref`` defaults to ``theta0``.
  """
  check_sweep(cfg, hp)
  theta0, theta_ref = _prep(cfg, theta0, theta_ref)
  return _run_jit(cfg, theta0, theta_ref, _as_sweep(hp), jax.random.key(0), None)


def run_monte_carlo(
  cfg: BanditConfig, theta0, hp: Sweep, *, key, n_seeds, group_size, theta_ref=None
) -> Trajectory:
  """Sampled trajectories for ``n_seeds`` seeds (vmapped); fields get a leading seed axis."""
  theta0, theta_ref = _prep(cfg, theta0, theta_ref)
  if int(group_size) < 2:
    raise ValueError(f'`group_size` must be >= 2, got {group_size}')
  hp = hp._replace(group_size=group_size)
  check_sweep(cfg, hp)
  keys = jax.random.split(key, int(n_seeds))
  return _run_mc(cfg, theta0, theta_ref, _as_sweep(hp), keys, int(group_size))


@functools.partial(jax.jit, static_argnums=(0, 5))
def _run_mc(cfg, theta0, theta_ref, hp, keys, group_size):
  return jax.vmap(lambda k: _run(cfg, theta0, theta_ref, hp, k, group_size))(keys)


@functools.partial(jax.jit, static_argnums=0)
def _sweep(cfg, theta0, theta_ref, flat):
  return jax.vmap(lambda h: _run(cfg, theta0, theta_ref, h, jax.random.key(0), None))(flat)


def sweep_exact(cfg: BanditConfig, theta0, hp: Sweep, *, theta_ref=None) -> Trajectory:
  """Deterministic trajectories for a grid: every ``hp`` field broadcast to a common shape.

  Returns a Trajectory whose fields lead with that shape; one compiled, vmapped call.
  """
  check_sweep(cfg, hp)
  fields = [jnp.asarray(v) for v in hp]
  shape = jnp.broadcast_shapes(*(f.shape for f in fields))
  flat = Sweep(*(jnp.broadcast_to(f, shape).reshape(-1) for f in fields))
  theta0, theta_ref = _prep(cfg, theta0, theta_ref)
  out = _sweep(cfg, theta0, theta_ref, _as_sweep(flat))
  return jax.tree.map(lambda a: a.reshape(shape + a.shape[1:]), out)


def _basis(n_arms, dtype):
  """Orthonormal basis of the logit space orthogonal to the softmax-invariant direction 1."""
  q, _ = np.linalg.qr(np.concatenate([np.ones((n_arms, 1)), np.eye(n_arms)[:, : n_arms - 1]], 1))
  return jnp.asarray(q[:, 1:], dtype)


def _reduced_gradient(cfg, theta_ref, hp, z):
  u = _basis(theta_ref.size, theta_ref.dtype)
  th = theta_ref + u @ z
  return u.T @ expected_gradient(cfg, th, th, theta_ref, hp)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _ascend(cfg, theta_ref, hp, z, steps):
  return jax.lax.fori_loop(
    0, steps, lambda _, z: z + hp.lr * _reduced_gradient(cfg, theta_ref, hp, z), z
  )


@functools.partial(jax.jit, static_argnums=0)
def _newton_step(cfg, theta_ref, hp, z):
  g = _reduced_gradient(cfg, theta_ref, hp, z)
  jac = jax.jacfwd(lambda zz: _reduced_gradient(cfg, theta_ref, hp, zz))(z)
  return jnp.linalg.solve(jac, -g), jnp.max(jnp.abs(g))


def _as_sweep(hp):
  return Sweep(*(jnp.asarray(v, jnp.result_type(float)) for v in hp))


def fixed_point(cfg: BanditConfig, theta_ref, hp: Sweep, *, ascent_steps=4000, newton_iters=20):
  """On-policy fixed point ``g(theta*, theta*) = 0`` (PAPERS.md §5).

  Plain on-policy gradient ascent (step ``hp.lr``) brings the logits near the fixed point,
  then Newton's method in the space orthogonal to the softmax shift polishes it to machine
  precision. Requires an interior fixed point (``kl_coef > 0``).
  """
  if not float(hp.kl_coef) > 0:
    raise ValueError('`kl_coef` must be > 0: without a KL anchor there is no interior fixed point')
  theta_ref = jnp.asarray(theta_ref, jnp.result_type(float))
  hp = _as_sweep(hp)
  # At theta = theta_old the ratio flag and the run length do not matter: share compilations.
  cfg = dataclasses.replace(cfg, steps=1, ratio=True)
  u = _basis(theta_ref.size, theta_ref.dtype)
  z = _ascend(cfg, theta_ref, hp, jnp.zeros(theta_ref.size - 1, theta_ref.dtype), int(ascent_steps))
  residual = np.inf
  for _ in range(int(newton_iters)):
    step, residual = _newton_step(cfg, theta_ref, hp, z)
    z = z + step
    if float(jnp.max(jnp.abs(step))) < 1e-14:
      break
  residual = float(jnp.max(jnp.abs(_reduced_gradient(cfg, theta_ref, hp, z))))
  if not residual < 1e-9:
    raise ValueError(f'no fixed point found from `theta_ref` (gradient residual {residual:.3g})')
  return theta_ref + u @ z


class Linearisation(NamedTuple):
  """Jacobians of the expected ascent direction at a fixed point, in reduced coordinates."""

  theta_star: jax.Array
  j_cur: np.ndarray
  j_old: np.ndarray
  grad_reward: np.ndarray  # dR/dz at theta*
  basis: np.ndarray  # [A, A - 1]


@functools.partial(jax.jit, static_argnums=0)
def _jacobians(cfg, theta_star, theta_ref, hp):
  u = _basis(theta_star.size, theta_star.dtype)

  def g(zc, zo):
    return u.T @ expected_gradient(cfg, theta_star + u @ zc, theta_star + u @ zo, theta_ref, hp)

  z0 = jnp.zeros(theta_star.size - 1, theta_star.dtype)
  j_cur, j_old = jax.jacfwd(g, argnums=(0, 1))(z0, z0)
  grad_r = jax.grad(lambda z: expected_reward(cfg, theta_star + u @ z))(z0)
  return j_cur, j_old, grad_r


def linearise(cfg: BanditConfig, theta_ref, hp: Sweep) -> Linearisation:
  """Full Jacobians ``J_cur = dg/dtheta`` and ``J_old = dg/dtheta_old`` at the fixed point.

  Coordinates are orthogonal to the softmax shift direction (the gradient never moves along
  it), so the Floquet test does not see its neutral multiplier.
  """
  theta_star = fixed_point(cfg, theta_ref, hp)
  theta_ref = jnp.asarray(theta_ref, theta_star.dtype)
  j_cur, j_old, grad_r = _jacobians(
    dataclasses.replace(cfg, steps=1), theta_star, theta_ref, _as_sweep(hp)
  )
  u = _basis(theta_star.size, theta_star.dtype)
  return Linearisation(
    theta_star, np.asarray(j_cur), np.asarray(j_old), np.asarray(grad_r), np.asarray(u)
  )


@functools.partial(jax.jit, static_argnums=(0, 5))
def _noise_samples(cfg, theta_star, theta_ref, hp, keys, group_size):
  u = _basis(theta_star.size, theta_star.dtype)
  return jax.vmap(
    lambda k: u.T @ sampled_gradient(cfg, theta_star, theta_star, theta_ref, hp, k, group_size)
  )(keys)


def gradient_noise_covariance(cfg, theta_star, theta_ref, hp: Sweep, *, key, n_samples, group_size):
  """Covariance of the sampled ascent direction at the fixed point (reduced coordinates)."""
  hp = _as_sweep(hp._replace(group_size=group_size))
  keys = jax.random.split(key, int(n_samples))
  cfg = dataclasses.replace(cfg, steps=1)
  theta_star = jnp.asarray(theta_star)
  theta_ref = jnp.asarray(theta_ref, theta_star.dtype)
  gs = _noise_samples(cfg, theta_star, theta_ref, hp, keys, int(group_size))
  return np.atleast_2d(np.cov(np.asarray(gs), rowvar=False))


def linear_noise_variance(lin: Linearisation, *, beta, eta, noise_cov):
  """Stationary Var(R) of the linearised on-policy (d = 1) heavy-ball map with gradient noise.

  Solves the discrete Lyapunov equation of ``x_{t+1} = (1+beta) x_t - beta x_{t-1}
  + eta ((J_cur + J_old) x_t + xi_t)`` and projects on ``grad R`` (the multivariate version
  of ``discrete.stationary_variance``).
  """
  n = lin.j_cur.shape[0]
  eye = np.eye(n)
  a = np.block([[(1 + beta) * eye + eta * (lin.j_cur + lin.j_old), -beta * eye], [eye, 0 * eye]])
  q = np.zeros((2 * n, 2 * n))
  q[:n, :n] = eta**2 * np.atleast_2d(noise_cov)
  cov = solve_discrete_lyapunov(a, q)
  gr = lin.grad_reward
  return float(gr @ cov[:n, :n] @ gr)


__all__ = [
  'BanditConfig',
  'Linearisation',
  'Sweep',
  'Trajectory',
  'check_sweep',
  'expected_gradient',
  'expected_objective',
  'expected_reward',
  'fixed_point',
  'gradient_noise_covariance',
  'linear_noise_variance',
  'linearise',
  'run_exact',
  'run_monte_carlo',
  'sampled_gradient',
  'sampled_objective',
  'sweep_exact',
]

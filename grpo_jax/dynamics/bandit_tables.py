"""The softmax-bandit tables of PAPERS.md §5: oscillation onset, refresh threshold, group size.

Each function measures on the bandit (``bandit.py``) and sets the measurement beside the exact
discrete theory (``discrete.py``) and the paper's claim. Rows are plain dicts (JSON-ready).
Call inside ``jax.enable_x64(True)``: thresholds and overshoots are read at 1e-10 levels.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.dynamics import bandit as bd
from grpo_jax.dynamics import discrete

CLAIM_ONSET = 'overdamped -> oscillatory transition (paper); exact map: beta_c = (1 - sqrt k)^2'
CLAIM_THRESHOLD = 'sharp refresh threshold at d* = gamma/k (paper); Floquet test of full Jacobians'
CLAIM_MEAN = 'mean trajectory G-invariant (paper)'
CLAIM_VAR = 'stationary Var(R) proportional to 1/G, i.e. Var*G constant (paper)'


@dataclasses.dataclass(frozen=True)
class TableSpec:
  """The bandit and grids of the tables (``quick`` shrinks every grid for tests)."""

  arm_means: tuple[float, ...] = (0.1, 0.3, 0.6, 0.9)
  # Two arms: the reduced dynamics are 1-D, so an overshoot of R* means complex roots (with
  # several modes a sum of real exponentials may cross R* once without any oscillation).
  onset_arms: tuple[float, ...] = (0.2, 0.8)
  group_size: int = 8
  kl_coef: float = 0.1
  lrs: tuple[float, ...] = (0.5, 2.0)
  beta_grid: tuple[float, ...] = tuple(np.round(np.arange(0.0, 0.96, 0.01), 2).tolist())
  onset_steps: int = 800
  threshold_betas: tuple[float, ...] = (0.0, 0.5, 0.9)
  d_max: int = 80
  periods: int = 30
  group_sizes: tuple[int, ...] = (2, 4, 8, 16, 32)
  mean_steps: int = 400
  var_betas: tuple[float, ...] = (0.0, 0.9)
  var_lr: float = 0.1
  var_seeds: int = 32
  var_steps: int = 1500
  var_burn: int = 300
  noise_samples: int = 4000
  seed: int = 0

  @classmethod
  def quick(cls):
    return cls(
      lrs=(2.0,),
      beta_grid=tuple(np.round(np.arange(0.0, 0.96, 0.05), 2).tolist()),
      onset_steps=300,
      threshold_betas=(0.0, 0.9),
      d_max=16,
      periods=12,
      group_sizes=(2, 32),
      mean_steps=150,
      var_betas=(0.0,),
      var_seeds=4,
      var_steps=300,
      var_burn=100,
      noise_samples=300,
    )


def _config(spec, *, ratio=True, steps, arms=None):
  arms = spec.arm_means if arms is None else arms
  return bd.BanditConfig(arm_means=arms, ratio=ratio, steps=steps, g_max=64)


def _theta_ref(spec, arms=None):
  return jnp.zeros(len(spec.arm_means if arms is None else arms), jnp.result_type(float))


def measure_k(spec, lr, theta_star, *, steps, arms=None, beta=0.0):
  """Stiffness ``k`` measured on an exact run released from rest near the fixed point.

  PAPERS.md §5's two routes: at ``beta = 0`` the per-step log-decay (a single decaying mode
  makes the AR(2) regressors collinear); at ``beta > 0`` an AR(2) fit with the known momentum,
  read while both roots of the map still show (not the far tail, where one mode is left).
  """
  cfg = _config(spec, steps=steps, arms=arms)
  hp = bd.Sweep(lr=lr, momentum=beta, refresh=1, kl_coef=spec.kl_coef, group_size=spec.group_size)
  theta_star = jnp.asarray(theta_star)
  r_star = float(bd.expected_reward(cfg, theta_star))
  u = np.zeros(theta_star.size)
  u[0], u[-1] = 1.0, -1.0  # orthogonal to the softmax shift
  theta0 = theta_star + 1e-5 * jnp.asarray(u)  # linear regime: nonlinear terms are ~1e-10
  r = np.asarray(bd.run_exact(cfg, theta0, hp, theta_ref=_theta_ref(spec, arms)).reward)
  x = np.abs(r - r_star)
  live = np.flatnonzero(x > 1e-6 * x[0])  # well above round-off (x[0] is ~1e-6)
  window = r[: max(int(live[-1]) + 1, 8)]
  if beta == 0.0:
    return lr * discrete.kappa_from_log_decay(window[1:], eta=lr, r_star=r_star)
  return discrete.kappa_from_ar2(window, eta=lr, beta=beta, r_star=r_star).k


def _sign_changes(x, tol):
  s = np.sign(np.where(np.abs(x) > tol, x, 0.0))
  s = s[s != 0]
  return int(np.sum(s[1:] != s[:-1]))


def onset_table(spec: TableSpec):
  """Oscillation onset beta_c: measured overshoot vs the exact map and the ODE, KL and plain."""
  rows = []
  betas = np.asarray(spec.beta_grid)
  for lr in spec.lrs:
    arms = spec.onset_arms
    cfg = _config(spec, steps=spec.onset_steps, arms=arms)
    hp = bd.Sweep(lr=lr, momentum=0.0, refresh=1, kl_coef=spec.kl_coef, group_size=spec.group_size)
    lin = bd.linearise(cfg, _theta_ref(spec, arms), hp)
    r_star = float(bd.expected_reward(cfg, lin.theta_star))
    k_modes = np.sort(-lr * np.linalg.eigvals(lin.j_cur + lin.j_old).real)
    k_log = measure_k(spec, lr, lin.theta_star, steps=spec.onset_steps, arms=arms)
    k_ar2 = measure_k(spec, lr, lin.theta_star, steps=spec.onset_steps, arms=arms, beta=0.5)
    traj = bd.sweep_exact(cfg, _theta_ref(spec, arms), hp._replace(momentum=jnp.asarray(betas)))
    x = np.asarray(traj.reward) - r_star
    # Real roots allow at most one crossing of R* (a sum of two decaying exponentials); a
    # second crossing means complex roots, i.e. oscillation. A single crossing below beta_c
    # can come from the velocity carried in from a far start (a nonlinear overshoot).
    crossings = np.array([_sign_changes(xi[1:], 1e-10) for xi in x])
    overshoot = crossings >= 1
    oscillates = crossings >= 2
    measured = float(betas[np.argmax(oscillates)]) if oscillates.any() else None
    first_overshoot = float(betas[np.argmax(overshoot)]) if overshoot.any() else None
    # Above the onset every grid point should oscillate; report any exception honestly.
    sharp = bool(oscillates.any() and oscillates[np.argmax(oscillates) :].all())
    # Just above beta_c the half period pi/Omega diverges and the next crossing shrinks by
    # |z|^(pi/Omega) below round-off; the map predicts the first grid point where a crossing
    # 1e-8 of the first excursion (our 1e-10 detection level) is still visible.
    roots = discrete.heavy_ball_roots(beta=betas, k=k_log)
    with np.errstate(divide='ignore', over='ignore'):
      shrink = np.abs(roots.z_dominant) ** (np.pi / roots.frequency)
    visible = roots.oscillatory & (shrink > 1e-8)
    resolvable = float(betas[np.argmax(visible)]) if visible.any() else None
    rows.append(
      {
        'case': 'kl',
        'arms': list(arms),
        'lr': lr,
        'r_star': r_star,
        'k_log_decay': k_log,
        'k_ar2_beta0.5': k_ar2,
        'k_modes': k_modes.tolist(),
        'beta_c_map': float(discrete.oscillation_onset(k=k_log)),
        'beta_c_ode': float(discrete.ode_oscillation_onset(k=k_log)),
        'beta_c_modes': [float(discrete.oscillation_onset(k=k)) for k in k_modes[::-1]],
        'beta_c_resolvable': resolvable,
        'beta_c_measured': measured,
        'beta_first_overshoot': first_overshoot,
        'grid_step': float(np.min(np.diff(betas))) if betas.size > 1 else None,
        'sharp': sharp,
        'overshoot': overshoot.tolist(),
        'oscillates': oscillates.tolist(),
        'claim': CLAIM_ONSET,
      }
    )
    # Plain (no KL): R* is the supremum max(p); R cannot overshoot it.
    plain = bd.sweep_exact(
      cfg, _theta_ref(spec, arms), hp._replace(momentum=jnp.asarray(betas), kl_coef=0.0)
    )
    rp = np.asarray(plain.reward)
    non_monotone = np.any(np.diff(rp, axis=1) < -1e-12, axis=1)
    rows.append(
      {
        'case': 'plain',
        'arms': list(arms),
        'lr': lr,
        'r_star': float(max(arms)),
        'max_reward': float(rp.max()),
        'beta_first_non_monotone': float(betas[np.argmax(non_monotone)])
        if non_monotone.any()
        else None,
        'beta_c_measured': None,
        'overshoot': [False] * betas.size,
        'oscillates': [False] * betas.size,
        'claim': 'no interior fixed point: R cannot overshoot sup R (PAPERS.md §5)',
      }
    )
  return rows


def _measured_radius(e, d, periods):
  """Per-period growth factor of a deviation, read inside its linear, above-round-off range.

  ``e`` is the deviation norm per step. Its maximum over each period (which smooths the
  within-period and complex-multiplier modulation) falls or grows by the radius per period;
  the slope of its log over the second half of the usable periods (the subdominant
  multipliers have decayed by then) gives the radius.
  """
  j = np.arange(1, periods)
  m = np.array([e[i * d : (i + 1) * d].max() for i in j])
  live = (m > 1e-13) & (m < 1e-4)
  stop = int(np.argmin(live)) if not live.all() else live.size
  if stop >= 2:
    lo = stop // 2 if stop >= 4 else 0
    slope = np.polyfit(j[lo:stop], np.log(m[lo:stop]), 1)[0]
    return float(math.exp(slope))
  # Left the range at once: growth if it exploded, decay if it vanished.
  return float('inf') if m[0] >= 1e-4 else 0.0


def threshold_table(spec: TableSpec):
  """Refresh threshold d*: brute-force bandit vs Floquet (full and projected) vs formulas."""
  rows = []
  ds = np.arange(1, spec.d_max + 1)
  rng = np.random.default_rng(spec.seed)
  for ratio in (True, False):
    for lr in spec.lrs:
      cfg0 = _config(spec, ratio=ratio, steps=1)
      hp = bd.Sweep(
        lr=lr, momentum=0.0, refresh=1, kl_coef=spec.kl_coef, group_size=spec.group_size
      )
      lin = bd.linearise(cfg0, _theta_ref(spec), hp)
      r_star = float(bd.expected_reward(cfg0, lin.theta_star))
      # Several modes here: the formulas get the slowest one, which the log-decay route measures.
      modes = -lr * np.linalg.eigvals(lin.j_cur + lin.j_old).real
      k, k_stiff = float(np.min(modes)), float(np.max(modes))
      gr = lin.grad_reward / np.linalg.norm(lin.grad_reward)
      jc_p, jo_p = gr @ lin.j_cur @ gr, gr @ lin.j_old @ gr
      v = lin.basis @ rng.normal(size=lin.basis.shape[1])
      theta0 = lin.theta_star + 1e-8 * jnp.asarray(v / np.linalg.norm(v))
      cfg = _config(spec, ratio=ratio, steps=spec.periods * spec.d_max)
      for beta in spec.threshold_betas:
        radii = discrete.floquet_radii(lin.j_cur, lin.j_old, beta=beta, eta=lr, d_max=spec.d_max)
        proj = discrete.floquet_radii(jc_p, jo_p, beta=beta, eta=lr, d_max=spec.d_max)
        traj = bd.sweep_exact(
          cfg,
          theta0,
          hp._replace(momentum=beta, refresh=jnp.asarray(ds)),
          theta_ref=_theta_ref(spec),
        )
        dev = np.asarray(traj.theta) - np.asarray(lin.theta_star)
        e = np.linalg.norm(dev @ lin.basis, axis=-1)
        periods = [spec.periods * spec.d_max // int(d) for d in ds]
        measured = np.array([_measured_radius(e[i], int(d), periods[i]) for i, d in enumerate(ds)])

        def first(mask):
          idx = np.flatnonzero(mask)
          return int(ds[idx[0]]) if idx.size else None

        rows.append(
          {
            'ratio': ratio,
            'r_star': r_star,
            'lr': lr,
            'beta': beta,
            'k': k,
            'k_stiff': k_stiff,
            'd_measured': first(measured > 1.0),
            'd_floquet': first(radii > 1.0 + 1e-9),
            'd_floquet_projected': first(proj > 1.0 + 1e-9),
            'd_mean_lag': float(discrete.mean_lag_threshold(beta=beta, k=k)),
            'd_paper': float(discrete.paper_threshold(beta=beta, k=k)),
            'd_stale_beta0': discrete.stale_threshold_beta0(k=k) if beta == 0 else None,
            'd_stale_beta0_stiff': discrete.stale_threshold_beta0(k=k_stiff) if beta == 0 else None,
            'd_max': spec.d_max,
            'agree': bool(np.array_equal(measured > 1.0, radii > 1.0 + 1e-9)),
            'radius_floquet': radii.tolist(),
            'radius_measured': [x if math.isfinite(x) else None for x in measured.tolist()],
            'claim': CLAIM_THRESHOLD,
          }
        )
  return rows


def group_table(spec: TableSpec):
  """Mean trajectory across G (exact) for KL and plain; stationary Var*G (Monte Carlo)."""
  mean_rows, var_rows = [], []
  gs = np.asarray(spec.group_sizes)
  lr = spec.var_lr
  curves = {}
  for case, kl in (('kl', spec.kl_coef), ('plain', 0.0)):
    cfg = _config(spec, steps=spec.mean_steps)
    hp = bd.Sweep(lr=lr, momentum=0.0, refresh=1, kl_coef=kl, group_size=jnp.asarray(gs))
    r = np.asarray(bd.sweep_exact(cfg, _theta_ref(spec), hp).reward)
    curves[case] = r
    ref = r[-1]
    for i, g in enumerate(gs):
      gap = r[i] - r[i, 0]
      final = r[i, -1]
      t90 = int(np.argmax(gap >= 0.9 * (final - r[i, 0]))) if final != r[i, 0] else None
      s = float(discrete.advantage_scale(final, int(g), ddof=1))
      mean_rows.append(
        {
          'case': case,
          'G': int(g),
          'R_final': float(final),
          't90': t90,
          's_R_final': s,
          'max_abs_dev_vs_Gmax': float(np.max(np.abs(r[i] - ref))),
          'claim': CLAIM_MEAN,
        }
      )
  # Stationary variance at the KL fixed point.
  cfg0 = _config(spec, steps=1)
  hp0 = bd.Sweep(lr=lr, momentum=0.0, refresh=1, kl_coef=spec.kl_coef, group_size=spec.group_size)
  key = jax.random.key(spec.seed)
  cfg = _config(spec, steps=spec.var_steps)
  # The KL fixed point moves with G (through s(R, G)): each G gets its own.
  lins = {int(g): bd.linearise(cfg0, _theta_ref(spec), hp0._replace(group_size=int(g))) for g in gs}
  for beta in spec.var_betas:
    for g in gs:
      key, k_mc, k_noise = jax.random.split(key, 3)
      lin_g = lins[int(g)]
      hp = hp0._replace(momentum=beta)
      traj = bd.run_monte_carlo(
        cfg,
        lin_g.theta_star,
        hp,
        key=k_mc,
        n_seeds=spec.var_seeds,
        group_size=int(g),
        theta_ref=_theta_ref(spec),
      )
      rr = np.asarray(traj.reward)[:, spec.var_burn :]
      var = float(np.mean((rr - rr.mean()) ** 2))
      noise = bd.gradient_noise_covariance(
        cfg, lin_g.theta_star, _theta_ref(spec), hp0, key=k_noise,
        n_samples=spec.noise_samples, group_size=int(g),
      )  # fmt: skip
      pred_full = bd.linear_noise_variance(lin_g, beta=beta, eta=lr, noise_cov=noise)
      # 1-D reward-direction theory: stiffness and noise projected on grad R.
      gr = lin_g.grad_reward
      gn = gr / np.linalg.norm(gr)
      k_g = float(-lr * gn @ (lin_g.j_cur + lin_g.j_old) @ gn)
      sigma2_r = float(gr @ noise @ gr)
      pred_1d = float(discrete.stationary_variance(beta=beta, k=k_g, eta_eff=lr, sigma2=sigma2_r))
      var_rows.append(
        {
          'beta': beta,
          'G': int(g),
          'var': var,
          'var_times_G': var * int(g),
          'var_pred_linear_noise': pred_full,
          'var_pred_1d': pred_1d,
          'k_projected': k_g,
          'claim': CLAIM_VAR,
        }
      )
  return mean_rows, var_rows, curves


__all__ = [
  'CLAIM_MEAN',
  'CLAIM_ONSET',
  'CLAIM_THRESHOLD',
  'CLAIM_VAR',
  'TableSpec',
  'group_table',
  'measure_k',
  'onset_table',
  'threshold_table',
]

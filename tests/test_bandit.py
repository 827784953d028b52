"""Softmax-bandit testbed (PAPERS.md §5): exact expected gradient, runs, sweeps, linearisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.dynamics import bandit as bd
from grpo_jax.dynamics import discrete

ARMS = (0.1, 0.3, 0.6, 0.9)
THETA_REF = np.zeros(4)
THETA_OLD = np.array([0.3, -0.2, 0.1, 0.0])
# Far enough from theta_old that arms 0 and 2 are clipped (|log rho| > log 1.2).
THETA = THETA_OLD + np.array([0.25, 0.05, -0.3, 0.02])


@pytest.mark.parametrize(
  'advantage,ratio,kl', [('std', True, 0.1), ('mean', True, 0.0), ('std', False, 0.2)]
)
def test_exact_expected_gradient_matches_monte_carlo(advantage, ratio, kl):
  with jax.enable_x64(True):
    cfg = bd.BanditConfig(arm_means=ARMS, advantage=advantage, ratio=ratio, n_prompts=4)
    hp = bd.Sweep(lr=0.5, momentum=0.0, refresh=1, kl_coef=kl, group_size=4)
    th, tho, ref = map(jnp.asarray, (THETA, THETA_OLD, THETA_REF))
    rho = np.exp(jax.nn.log_softmax(th) - jax.nn.log_softmax(tho))
    assert np.any(np.abs(np.log(rho)) > np.log(1.2))  # the clip is active on some arm
    exact = jax.jit(lambda: bd.expected_gradient(cfg, th, tho, ref, hp))()
    keys = jax.random.split(jax.random.key(0), 50_000)
    mc = jax.jit(jax.vmap(lambda k: bd.sampled_gradient(cfg, th, tho, ref, hp, k, 4)))(keys)
    se = np.asarray(mc.std(0)) / np.sqrt(keys.shape[0])
    np.testing.assert_allclose(mc.mean(0), exact, atol=4.5 * se.max())


def test_unclipped_expected_gradient_is_s_times_grad_reward():
  # PAPERS.md §5: with a ratio and no clipping the force is s(R_old, G) grad R(theta).
  with jax.enable_x64(True):
    cfg = bd.BanditConfig(arm_means=ARMS, clip_eps=None)
    hp = bd.Sweep(group_size=5)
    th, tho = jnp.asarray(THETA), jnp.asarray(THETA_OLD)
    g = bd.expected_gradient(cfg, th, tho, th, hp)
    r_old = bd.expected_reward(cfg, tho)
    s = discrete.advantage_scale(r_old, 5, ddof=1)
    np.testing.assert_allclose(
      g, s * jax.grad(lambda t: bd.expected_reward(cfg, t))(th), rtol=1e-12
    )


def test_exact_run_is_deterministic_heavy_ball_sgd():
  with jax.enable_x64(True):
    cfg = bd.BanditConfig(arm_means=ARMS, steps=3)
    hp = bd.Sweep(lr=0.7, momentum=0.6, refresh=1, kl_coef=0.1, group_size=8)
    traj = bd.run_exact(cfg, THETA_REF, hp)
    # Hand-rolled x_{t+1} = x_t + beta (x_t - x_{t-1}) + eta g(x_t) from rest.
    th_prev = th = jnp.asarray(THETA_REF)
    for t in range(3):
      np.testing.assert_allclose(traj.theta[t], th, rtol=1e-12, atol=1e-14)
      g = bd.expected_gradient(cfg, th, th, jnp.asarray(THETA_REF), hp)
      th, th_prev = th + 0.6 * (th - th_prev) + 0.7 * g, th
    np.testing.assert_allclose(traj.theta[3], th, rtol=1e-12)
    np.testing.assert_allclose(traj.reward, bd.expected_reward(cfg, traj.theta), rtol=1e-14)


def test_sweep_matches_individual_runs():
  with jax.enable_x64(True):
    cfg = bd.BanditConfig(arm_means=ARMS, steps=40)
    hp = bd.Sweep(
      lr=0.5, momentum=jnp.array([[0.0], [0.8]]), refresh=jnp.array([[1, 3, 7]]), kl_coef=0.1,
      group_size=8,
    )  # fmt: skip
    sweep = bd.sweep_exact(cfg, THETA_REF, hp)
    assert sweep.reward.shape == (2, 3, 41)
    one = bd.run_exact(cfg, THETA_REF, bd.Sweep(lr=0.5, momentum=0.8, refresh=7, kl_coef=0.1))
    np.testing.assert_allclose(sweep.reward[1, 2], one.reward, rtol=1e-12)
    # A longer refresh interval changes the trajectory (the sampler is stale in between).
    assert not np.allclose(sweep.reward[1, 0], sweep.reward[1, 2])


def test_monte_carlo_mean_tracks_exact_trajectory():
  with jax.enable_x64(True):
    cfg = bd.BanditConfig(arm_means=ARMS, steps=30, n_prompts=8)
    hp = bd.Sweep(lr=0.3, momentum=0.5, refresh=2, kl_coef=0.1, group_size=8)
    mc = bd.run_monte_carlo(cfg, THETA_REF, hp, key=jax.random.key(1), n_seeds=256, group_size=8)
    exact = bd.run_exact(cfg, THETA_REF, hp)
    assert mc.reward.shape == (256, 31)
    se = mc.reward.std(0) / np.sqrt(256)
    assert np.all(np.abs(mc.reward.mean(0) - exact.reward) < 5 * se + 2e-3)


def test_fixed_point_and_jacobians():
  with jax.enable_x64(True):
    cfg = bd.BanditConfig(arm_means=ARMS)
    hp = bd.Sweep(lr=1.0, kl_coef=0.1, group_size=8)
    lin = bd.linearise(cfg, THETA_REF, hp)
    ref = jnp.asarray(THETA_REF)
    g = bd.expected_gradient(cfg, lin.theta_star, lin.theta_star, ref, hp)
    np.testing.assert_allclose(g, 0.0, atol=1e-12)
    assert 0.6 < float(bd.expected_reward(cfg, lin.theta_star)) < 0.9  # interior: below max p
    # J_cur against a finite difference of the exact gradient along the first basis vector.
    v = jnp.asarray(lin.basis[:, 0])
    h = 1e-6
    fd = (
      bd.expected_gradient(cfg, lin.theta_star + h * v, lin.theta_star, ref, hp)
      - bd.expected_gradient(cfg, lin.theta_star - h * v, lin.theta_star, ref, hp)
    ) / (2 * h)
    np.testing.assert_allclose(lin.basis.T @ np.asarray(fd), lin.j_cur[:, 0], atol=1e-8)
    assert np.linalg.norm(lin.j_old) > 1e-3  # the sampler enters through s(R_old) and the KL


def test_floquet_threshold_matches_brute_force_stale_bandit():
  with jax.enable_x64(True):
    cfg = bd.BanditConfig(arm_means=(0.2, 0.8), ratio=False, steps=600)
    hp = bd.Sweep(lr=2.0, momentum=0.0, kl_coef=0.1, group_size=8)
    lin = bd.linearise(cfg, np.zeros(2), hp)
    radii = discrete.floquet_radii(lin.j_cur, lin.j_old, beta=0.0, eta=2.0, d_max=20)
    d_star = discrete.floquet_threshold(lin.j_cur, lin.j_old, beta=0.0, eta=2.0, d_max=20)
    k = -2.0 * float(lin.j_old[0, 0] + lin.j_cur[0, 0])
    assert d_star == discrete.stale_threshold_beta0(k=k)  # 1-D reduced space: floor(2/k)+1
    ds = jnp.arange(1, 21)
    theta0 = lin.theta_star + 1e-7 * jnp.asarray(lin.basis[:, 0])
    traj = bd.sweep_exact(cfg, theta0, hp._replace(refresh=ds), theta_ref=np.zeros(2))
    dev = np.abs((np.asarray(traj.theta) - np.asarray(lin.theta_star)) @ lin.basis[:, 0])
    grew = dev[:, 300:].max(1) > dev[:, :20].max(1)
    clear = np.abs(radii - 1) > 1e-2
    np.testing.assert_array_equal(grew[clear], (radii > 1)[clear])
    assert grew[d_star - 1] and not grew[d_star - 2]


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match='arm_means'):
    bd.BanditConfig(arm_means=(0.5,))
  with pytest.raises(ValueError, match='arm_means'):
    bd.BanditConfig(arm_means=(0.5, 1.5))
  cfg = bd.BanditConfig(arm_means=ARMS, steps=2)
  with pytest.raises(ValueError, match='momentum'):
    bd.sweep_exact(cfg, THETA_REF, bd.Sweep(momentum=jnp.array([0.5, 1.0])))
  with pytest.raises(ValueError, match='group_size'):
    bd.sweep_exact(cfg, THETA_REF, bd.Sweep(group_size=1))
  with pytest.raises(ValueError, match='kl_coef'):
    bd.fixed_point(cfg, THETA_REF, bd.Sweep(kl_coef=0.0))
  with pytest.raises(ValueError, match='refresh'):
    bd.run_exact(cfg, THETA_REF, bd.Sweep(refresh=0))
  with pytest.raises(ValueError, match='theta0'):
    bd.run_exact(cfg, np.zeros(3), bd.Sweep())

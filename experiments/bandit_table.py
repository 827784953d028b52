"""Softmax-bandit tables of the reduced-order GRPO model, each beside the paper's claim.

Sweeps momentum beta and refresh interval d (and G) on the softmax bandit (PAPERS.md §5):
oscillation onset, refresh threshold (measured vs Floquet vs mean-lag vs gamma/k), and the
group-size tables (mean trajectory, Var*G), for the KL-anchored and the plain case.

  python experiments/bandit_table.py [--quick] [--out runs/bandit_table]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import jax
import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from grpo_jax.dynamics import bandit_tables as bt  # noqa: E402


def _fmt(v):
  if v is None:
    return '-'
  if isinstance(v, bool):
    return 'yes' if v else 'no'
  if isinstance(v, float):
    return f'{v:.4g}'
  return str(v)


def print_table(title, rows, cols, claim, verdict):
  print(f'\n## {title}\nclaim: {claim}\nresult: {verdict}')
  widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
  print('  '.join(c.rjust(w) for c, w in zip(cols, widths)))
  for r in rows:
    print('  '.join(_fmt(r.get(c)).rjust(w) for c, w in zip(cols, widths)))


def verdicts(onset, threshold, mean_rows, var_rows):
  out = {}
  kl = [r for r in onset if r['case'] == 'kl']
  # Measured onset = first grid point with a second crossing; the map predicts it exactly
  # once the crossing's visibility (|z|^(pi/Omega)) is accounted for.
  ok = [
    r['beta_c_measured'] is not None and r['beta_c_measured'] == r['beta_c_resolvable'] for r in kl
  ]
  near = [
    r['beta_c_measured'] is not None and abs(r['beta_c_measured'] - r['beta_c_map']) <= 0.02
    for r in kl
  ]
  plain = [r for r in onset if r['case'] == 'plain']
  out['onset'] = (
    f'KL-anchored: measured onset within 0.02 of (1 - sqrt k)^2 in {sum(near)}/{len(near)} '
    f"sweeps, equal to the map's first resolvable grid point in {sum(ok)}/{len(ok)}; a single "
    'nonlinear overshoot appears earlier (beta_first_overshoot); plain: no overshoot in '
    f'{len(plain)}/{len(plain)} sweeps (R* is the supremum)'
  )

  def first_unstable(x):
    return math.floor(x) + 1

  floq = sum(r['d_measured'] == r['d_floquet'] for r in threshold)
  proj = sum(r['d_measured'] == r['d_floquet_projected'] for r in threshold)
  paper = sum(
    r['d_measured'] == (first_unstable(r['d_paper']) if r['d_paper'] < r['d_max'] else None)
    for r in threshold
  )
  stale = [r for r in threshold if not r['ratio']]
  lag = sum(
    r['d_measured'] is not None and abs(r['d_measured'] - r['d_mean_lag']) <= 1.0 for r in stale
  )
  ratio_stable = sum(r['d_measured'] is None for r in threshold if r['ratio'])
  n = len(threshold)
  out['threshold'] = (
    f'measured d* equals the Floquet test in {floq}/{n} rows (reward-direction projection '
    f'{proj}/{n}); gamma/k right in {paper}/{n} (within d_max); mean-lag (slowest k) within one '
    f'step in {lag}/{len(stale)} stale rows; '
    f'with the PPO ratio {ratio_stable}/{sum(r["ratio"] for r in threshold)} rows stable '
    'up to d_max'
  )
  gmax = max(r['G'] for r in mean_rows)
  devs = {r['G']: r['max_abs_dev_vs_Gmax'] / r['R_final'] for r in mean_rows if r['case'] == 'kl'}
  out['mean'] = (
    f'max |R_G(t) - R_{gmax}(t)| / R*: '
    + ', '.join(f'G={g}: {d:.1%}' for g, d in sorted(devs.items()))
    + ' (time rescaled by s(R, G); not invariant at small G)'
  )
  by_beta = {}
  for r in var_rows:
    by_beta.setdefault(r['beta'], []).append(r)
  parts = []
  for beta, rs in by_beta.items():
    vg = {r['G']: r['var_times_G'] for r in rs}
    big = [v for g, v in vg.items() if g >= 8]
    spread = (max(big) / min(big) - 1) if len(big) > 1 else float('nan')
    ratio2 = vg[min(vg)] / vg[max(vg)]
    big = big if len(big) > 1 else list(vg.values())
    parts.append(
      f'beta={beta}: Var*G spread over G>=8 {spread:.0%}, Var*G(G={min(vg)})/Var*G(G={max(vg)})'
      f' = {ratio2:.2f}'
    )
  if len(by_beta) > 1:
    b0, b1 = min(by_beta), max(by_beta)
    v0 = {r['G']: r for r in by_beta[b0]}
    v1 = {r['G']: r for r in by_beta[b1]}
    ratios = ', '.join(
      f'G={g}: {v1[g]["var"] / v0[g]["var"]:.2f} (pred '
      f'{v1[g]["var_pred_linear_noise"] / v0[g]["var_pred_linear_noise"]:.2f})'
      for g in sorted(v0)
    )
    parts.append(f'Var(beta={b1})/Var(beta={b0}) measured (predicted): {ratios}')
  out['variance'] = '; '.join(parts)
  return out


def figures(out, onset, threshold, mean_rows, var_rows, curves, spec):
  fig, ax = plt.subplots(figsize=(6, 3.5))
  betas = np.asarray(spec.beta_grid)
  for r in (r for r in onset if r['case'] == 'kl'):
    osc = np.asarray(r['oscillates'], float)
    line = ax.step(betas, osc, where='mid', label=f'lr={r["lr"]}')
    ax.axvline(r['beta_c_map'], color=line[0].get_color(), ls='--')
    ax.axvline(r['beta_c_ode'], color=line[0].get_color(), ls=':')
  ax.set(xlabel='momentum beta', ylabel='oscillates (2+ crossings)', title='onset: -- map, : ODE')
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / 'onset.png', dpi=100)
  plt.close(fig)

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
  for ax, ratio in zip(axes, (True, False)):
    for r in (r for r in threshold if r['ratio'] == ratio):
      ds = np.arange(1, len(r['radius_floquet']) + 1)
      line = ax.plot(ds, r['radius_floquet'], label=f'lr={r["lr"]} beta={r["beta"]}')
      meas = np.array([np.nan if not v else v for v in r['radius_measured']])
      ax.plot(ds, meas, 'o', ms=3, color=line[0].get_color())
    ax.axhline(1.0, color='k', lw=0.5)
    ax.set(xlabel='refresh interval d', yscale='log')
    ax.set_title('PPO ratio' if ratio else 'fully stale gradient')
  axes[0].set_ylabel('monodromy radius (line) / measured (dots)')
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / 'threshold.png', dpi=100)
  plt.close(fig)

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  for i, g in enumerate(spec.group_sizes):
    axes[0].plot(curves['kl'][i], label=f'G={g}')
  axes[0].set(xlabel='step', ylabel='R (exact)', title='KL-anchored mean trajectory')
  axes[0].legend()
  for beta in sorted({r['beta'] for r in var_rows}):
    rs = [r for r in var_rows if r['beta'] == beta]
    axes[1].plot([r['G'] for r in rs], [r['var_times_G'] for r in rs], 'o-', label=f'beta={beta}')
    axes[1].plot([r['G'] for r in rs], [r['var_pred_linear_noise'] * r['G'] for r in rs], 'k:')
  axes[1].set(xscale='log', xlabel='G', ylabel='Var(R) * G', title='measured (o), linear noise (:)')
  axes[1].legend()
  fig.tight_layout()
  fig.savefig(out / 'group.png', dpi=100)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='tiny grids (smoke test)')
  parser.add_argument('--out', default='runs/bandit_table', help='output directory')
  args = parser.parse_args(argv)
  spec = bt.TableSpec.quick() if args.quick else bt.TableSpec()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  with jax.enable_x64(True):
    onset = bt.onset_table(spec)
    threshold = bt.threshold_table(spec)
    mean_rows, var_rows, curves = bt.group_table(spec)
  v = verdicts(onset, threshold, mean_rows, var_rows)
  print_table(
    'Oscillation onset beta_c (d = 1)',
    onset,
    ['case', 'lr', 'r_star', 'k_log_decay', 'k_ar2_beta0.5', 'beta_c_map', 'beta_c_ode',
     'beta_c_resolvable', 'beta_c_measured', 'beta_first_overshoot', 'max_reward'],
    bt.CLAIM_ONSET,
    v['onset'],
  )  # fmt: skip
  print_table(
    'Refresh-interval threshold d* (first unstable d)',
    threshold,
    ['ratio', 'lr', 'beta', 'k', 'k_stiff', 'd_measured', 'd_floquet', 'd_floquet_projected',
     'd_mean_lag', 'd_paper', 'd_stale_beta0', 'd_stale_beta0_stiff', 'd_max'],
    bt.CLAIM_THRESHOLD,
    v['threshold'],
  )  # fmt: skip
  print_table(
    'Group size: mean trajectory (exact)',
    mean_rows,
    ['case', 'G', 'R_final', 't90', 's_R_final', 'max_abs_dev_vs_Gmax'],
    bt.CLAIM_MEAN,
    v['mean'],
  )
  print_table(
    'Group size: stationary variance at the KL fixed point (Monte Carlo)',
    var_rows,
    ['beta', 'G', 'var', 'var_times_G', 'var_pred_linear_noise', 'var_pred_1d', 'k_projected'],
    bt.CLAIM_VAR,
    v['variance'],
  )
  result = {
    'spec': {k: list(x) if isinstance(x, tuple) else x for k, x in vars(spec).items()},
    'onset': onset,
    'threshold': threshold,
    'group_mean': mean_rows,
    'group_variance': var_rows,
    'verdicts': v,
  }
  (out / 'bandit_table.json').write_text(json.dumps(result, indent=1))
  figures(out, onset, threshold, mean_rows, var_rows, curves, spec)
  print(f'\nwrote {out / "bandit_table.json"} and figures onset.png, threshold.png, group.png')
  return result


if __name__ == '__main__':
  sys.exit(main() and 0)

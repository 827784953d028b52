"""A run SIGKILLed at random moments and restarted ends bitwise equal to an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from _tiny_run import TINY, tiny_cfg

from grpo_jax import train as T
from grpo_jax.checkpoint import CheckpointStore
from grpo_jax.metrics import read_metrics


def _lines(path):
  try:
    with open(path, 'rb') as f:
      return f.read().count(b'\n')
  except FileNotFoundError:
    return 0


def _run_killed(out, steps, kills, seed):
  """Starts the trainer CLI, SIGKILLs it `kills` times at random moments, then lets it finish."""
  cmd = [sys.executable, '-m', 'grpo_jax.train', *TINY, f'output_dir={out}', f'steps={steps}']
  rng = np.random.default_rng(seed)
  metrics = os.path.join(out, 'metrics.jsonl')
  # Restarts load their executables from a persistent compilation cache instead of
  # compiling again (the same executables, so results are unchanged).
  env = {
    **os.environ,
    'JAX_COMPILATION_CACHE_DIR': os.path.join(os.path.dirname(out), 'jax_cache'),
    'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
    'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
  }
  killed = 0
  for _ in range(kills):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    start, wait_rows = _lines(metrics), int(rng.integers(1, 5))
    deadline = time.monotonic() + 600
    while proc.poll() is None and _lines(metrics) < start + wait_rows:
      assert time.monotonic() < deadline, 'the trainer made no progress'
      time.sleep(0.01)
    time.sleep(float(rng.uniform(0, 0.3)))  # land anywhere: sampling, update, checkpoint write
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      killed += 1
    proc.wait()
    proc.stderr.close()
  done = subprocess.run(
    cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600, env=env
  )
  assert done.returncode == 0, done.stderr.decode()[-2000:]
  return killed


def _check(tmp_path, steps, kills, seed):
  T.train(tiny_cfg(tmp_path / 'full', f'steps={steps}'), progress=False, log=lambda *_: None)
  killed = _run_killed(tmp_path / 'killed', steps, kills, seed)
  assert killed >= 1
  stores = [
    CheckpointStore(tmp_path / d / 'checkpoints', read_only=True) for d in ('full', 'killed')
  ]
  assert stores[1].latest_step() == steps
  full, resumed = (s.restore_params() for s in stores)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  # Re-logged steps collapse to one row per step, with the uninterrupted run's rewards.
  rows = [read_metrics(tmp_path / d, kind='train') for d in ('full', 'killed')]
  assert [r['step'] for r in rows[1]] == list(range(1, steps + 1))
  assert [r['train/reward_mean'] for r in rows[0]] == [r['train/reward_mean'] for r in rows[1]]


def test_two_sigkills_resume_bitwise(tmp_path):
  _check(tmp_path, steps=8, kills=2, seed=0)


@pytest.mark.slow
def test_many_sigkills_resume_bitwise(tmp_path):
  _check(tmp_path, steps=16, kills=6, seed=1)

"""Multi-host: two processes on 127.0.0.1 (gloo CPU collectives) run one sharded training step,
and a whole trainer run, each equal to the single-process result."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from _sharded_step import flatten, single_device_result

TESTS = Path(__file__).parent

WORKER = """
import sys
import jax
jax.config.update('jax_num_cpu_devices', 4)  # each process brings its own 4 CPU devices
import numpy as np
from grpo_jax import sharding

address, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
joined = sharding.initialize_distributed(sharding.DistributedConfig(
  enabled=True, coordinator_address=address, num_processes=2, process_id=pid,
  cpu_collectives='gloo', initialization_timeout=120))
assert joined and jax.process_count() == 2 and jax.device_count() == 8
assert jax.local_device_count() == 4
sys.path.insert(0, {tests!r})
import _sharded_step as S
loss, grads, params = S.run(sharding.make_mesh(data=2, fsdp=2, tensor=2))
if pid == 0:
  np.savez(out, loss=loss, **{{'grads/' + k: v for k, v in S.flatten(grads).items()}},
           **{{'params/' + k: v for k, v in S.flatten(params).items()}})
jax.distributed.shutdown()
"""


TRAINER_WORKER = """
import json, sys
import jax
jax.config.update('jax_num_cpu_devices', 4)
import numpy as np
from jax.experimental import multihost_utils
sys.path.insert(0, {tests!r})
from _tiny_run import tiny_cfg
from grpo_jax import train as T

address, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = tiny_cfg(out, *{run!r}, 'mesh.fsdp=4', 'mesh.tensor=2', 'mesh.distributed=true',
               f'mesh.coordinator_address={{address}}', 'mesh.num_processes=2',
               f'mesh.process_id={{pid}}', 'mesh.cpu_collectives=gloo',
               'mesh.initialization_timeout=120')
trainer = T.Trainer(cfg, progress=False, log=lambda *_: None)
summary = trainer.run()
assert jax.process_count() == 2 and dict(trainer.mesh.shape)['fsdp'] == 4
# Again with a before_acc of each process's own: only process 0 reads the evaluations, so
# the two agree on after_acc only through the broadcast.
again = trainer.summary({{'before_acc': 0.25 + 0.5 * pid, 'step': 2, 'updates': 4,
                         'cum/time_s': 0.0}})
with open(f'{{out}}/summary_p{{pid}}.json', 'w') as f:
  json.dump({{'run': summary, 'again': again}}, f)
leaves = [multihost_utils.process_allgather(x, tiled=True) for x in jax.tree.leaves(trainer.params)]
if pid == 0:
  np.savez(f'{{out}}/params.npz', *[np.asarray(x) for x in leaves])
jax.distributed.shutdown()
"""
TRAINER_RUN = ('steps=2', 'eval.every=1', 'checkpoint.every=1', 'optim.lr=1e-4')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_two_processes(script, out):
  address = f'127.0.0.1:{_free_port()}'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  procs = [
    subprocess.Popen(
      [sys.executable, str(script), address, str(pid), str(out)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for pid in range(2)
  ]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=600)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for pid, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f'process {pid} failed:\n{log[-3000:]}'


def test_two_process_sharded_step_equals_single_process(tmp_path):
  script = tmp_path / 'worker.py'
  script.write_text(WORKER.format(tests=str(TESTS)))
  out = tmp_path / 'result.npz'
  _run_two_processes(script, out)
  result = dict(np.load(out))
  loss, grads, params = single_device_result()
  np.testing.assert_allclose(result.pop('loss'), loss, rtol=1e-6)
  expected = {
    **{'grads/' + k: v for k, v in flatten(grads).items()},
    **{'params/' + k: v for k, v in flatten(params).items()},
  }
  assert set(result) == set(expected)
  for k, v in expected.items():
    np.testing.assert_allclose(result[k], v, atol=1e-5, rtol=0, err_msg=k)


def test_two_process_trainer_run_equals_single_process(tmp_path):
  """The trainer over 2 processes x 4 devices (fsdp=4, tensor=2): params, logged metrics and
  the summary equal one process's run; only process 0 writes metrics."""
  import jax
  from _tiny_run import QUIET, tiny_cfg

  from grpo_jax import train as T
  from grpo_jax.metrics import read_metrics

  script = tmp_path / 'trainer_worker.py'
  script.write_text(TRAINER_WORKER.format(tests=str(TESTS), run=TRAINER_RUN))
  out = tmp_path / 'multi'
  _run_two_processes(script, out)

  single = T.Trainer(tiny_cfg(tmp_path / 'single', *TRAINER_RUN), **QUIET)
  summary = single.run()
  got = np.load(out / 'params.npz')
  want = [np.asarray(x) for x in jax.tree.leaves(single.params)]
  assert len(got.files) == len(want)
  moved = max(float(np.abs(w - np.asarray(i)).max()) for w, i in
              zip(want, jax.tree.leaves(single.init_params)))  # fmt: skip
  assert moved > 1e-4  # the comparison below is not vacuous
  for i, w in enumerate(want):
    np.testing.assert_allclose(got[f'arr_{i}'], w, atol=1e-5, rtol=0, err_msg=f'leaf {i}')
  rows_1, rows_2 = read_metrics(single.out, kind='train'), read_metrics(out, kind='train')
  assert [r['step'] for r in rows_2] == [1, 2]  # written once, by process 0
  for r1, r2 in zip(rows_1, rows_2):
    for key in ('train/reward_mean', 'train/reward_std', 'train/len_mean'):
      assert r2[key] == r1[key], key
  evals_1, evals_2 = read_metrics(single.out, kind='eval'), read_metrics(out, kind='eval')
  assert [r['eval/greedy_acc'] for r in evals_2] == [r['eval/greedy_acc'] for r in evals_1]
  p0, p1 = (json.loads((out / f'summary_p{i}.json').read_text()) for i in (0, 1))
  assert p0['run'] == {**summary, 'figure': p0['run']['figure'], 'time_s': p0['run']['time_s']}
  assert p0['run']['figure'] and p1['run']['figure'] is None
  assert p1['run']['after_acc'] == p0['run']['after_acc']
  # Process 1's own before_acc (0.75) would be its after_acc without process 0's evaluations.
  assert p0['again']['before_acc'] == 0.25 and p1['again']['before_acc'] == 0.75
  assert p1['again']['after_acc'] == p0['again']['after_acc'] == summary['after_acc']

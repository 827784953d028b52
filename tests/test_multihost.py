"""Multi-host: two processes on 127.0.0.1 (gloo CPU collectives) run one sharded training step."""

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


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_process_sharded_step_equals_single_process(tmp_path):
  script = tmp_path / 'worker.py'
  script.write_text(WORKER.format(tests=str(TESTS)))
  address = f'127.0.0.1:{_free_port()}'
  out = tmp_path / 'result.npz'
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

"""Worker side of `rewards.SafeScorer`: scores untrusted completions in a child process.

The scorer's fork server imports this module once, so each worker forked from it starts
with math-verify and reasoning-gym already imported and math-verify's regex caches warm
(worker start-up then costs milliseconds, which matters because hostile completions get
their worker killed). The protocol is JSON over a pipe, never pickle:

  parent -> worker: {"jobs": [[job_id, kind, args], ...]}  or  null (exit)
  worker -> parent: ["ready"] | ["setup"] | ["done", job_id, score or null]

"setup" announces slow one-off work (building a reasoning-gym dataset) so the parent grants
it a longer deadline; "ready" ends it. A score of null means the completion could not be
scored (the parent substitutes its error value).
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import multiprocessing.forkserver
import os
import resource
import signal
import sys

import math_verify
import math_verify.grader
import math_verify.parser
import reasoning_gym
from reasoning_gym.utils import extract_answer

from grpo_jax.rewards import TruncateLogFilter

# Timeouts are disabled inside the worker (the parent's deadline and SIGKILL replace
# math-verify's SIGALRM); its one-off "timeout is disabled" notice would only add noise.
math_verify.parser.TIMEOUT_WARNING_SHOWN = True
math_verify.grader.TIMEOUT_WARNING_SHOWN = True


def _gold(answer: str):
  # A bare reference answer (e.g. '\frac{1}{2}' or 'x^2+1') parses reliably as inline math.
  if '$' in answer or '\\boxed' in answer:
    return math_verify.parse(answer, parsing_timeout=None)
  return math_verify.parse(f'${answer}$', parsing_timeout=None)


def score_math(completion: str, answer: str) -> float | None:
  """1.0 if math-verify finds the completion's answer equal to the reference, else 0.0."""
  gold = _gold(answer)
  if not gold:
    return None
  pred = math_verify.parse(completion, parsing_timeout=None)
  if not pred:
    return 0.0
  return float(math_verify.verify(gold, pred, timeout_seconds=None))


_DATASETS: dict[str, object] = {}


def _dataset(spec_json: str, conn):
  ds = _DATASETS.get(spec_json)
  if ds is None:
    conn.send_bytes(b'["setup"]')
    spec = json.loads(spec_json)
    ds = reasoning_gym.create_dataset(
      spec['name'], seed=spec['seed'], size=spec['size'], **spec['config']
    )
    _DATASETS[spec_json] = ds
    conn.send_bytes(b'["ready"]')
  return ds


def score_reasoning_gym(spec_json: str, index: int, completion: str, *, conn) -> float | None:
  """The dataset's own scorer on the `<answer>` tag's content (the whole text if untagged)."""
  ds = _dataset(spec_json, conn)
  entry = ds[index]
  answer = extract_answer(completion)
  if answer is None:
    answer = completion.strip()
  return float(ds.score_answer(answer, entry))


def _run(kind: str, args: list, conn) -> float | None:
  if kind == 'math':
    return score_math(*args)
  if kind == 'reasoning_gym':
    return score_reasoning_gym(*args, conn=conn)
  raise ValueError(f'unknown scoring kind {kind!r}')


def _address_space_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[0]) * resource.getpagesize()


def _die_with_parent() -> None:
  # A worker busy in C code (e.g. 10**10**10) never reads the pipe's EOF, so without this
  # it would outlive a killed trainer. The fork server exits once the trainer and every
  # holder of its "alive" pipe are gone, and the kernel then SIGKILLs its children (Linux
  # prctl PR_SET_PDEATHSIG). Workers never start processes themselves, so they drop their
  # copy of that pipe, which would otherwise keep the fork server (and so themselves) alive.
  state = getattr(multiprocessing.forkserver, '_forkserver', None)
  alive_fd = getattr(state, '_forkserver_alive_fd', None)
  if alive_fd is not None:
    os.close(alive_fd)
    state._forkserver_alive_fd = None
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    return


def worker_main(conn, memory_bytes: int) -> None:
  """Serves scoring jobs until told to exit; each job's failure scores null."""
  parent = os.getppid()
  _die_with_parent()
  if os.getppid() != parent:  # the parent died before the death signal was armed
    return
  handler = logging.StreamHandler(sys.stderr)
  handler.addFilter(TruncateLogFilter())
  logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
  if memory_bytes > 0:
    # The cap is headroom above what the (already imported) worker occupies.
    limit = _address_space_bytes() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  conn.send_bytes(b'["ready"]')
  while True:
    try:
      msg = json.loads(conn.recv_bytes())
    except EOFError:
      return
    if msg is None:
      return
    for job_id, kind, args in msg['jobs']:
      try:
        value = _run(kind, args, conn)
        if value is not None and not math.isfinite(value):
          value = None
      except (Exception, MemoryError, RecursionError):
        value = None
      conn.send_bytes(json.dumps(['done', job_id, value]).encode())


def _warm() -> None:
  # Compiles and caches math-verify's extraction regexes once, in the fork server.
  gold = _gold('\\frac{1}{2}')
  math_verify.verify(gold, math_verify.parse('so \\boxed{0.5}', parsing_timeout=None))


_warm()

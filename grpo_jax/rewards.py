"""Reward functions (TRL's signature), their weighted combination, and bounded scoring.

Every reward function has one signature, the one TRL users know:

    reward_fn(prompts, completions, **columns) -> list[float]

where `columns` are the dataset's other fields, one value per completion (e.g. `answer`),
plus `completion_lengths` (token counts) supplied by the trainer. `combine_rewards` sums
weighted functions and keeps each function's raw values, logged as `train/reward/<name>`.

Completions are untrusted. Whatever a completion holds (huge numbers such as `10**10**10`,
deep nesting, megabytes of text, invalid unicode, LaTeX bombs) it scores a declared error
value (0.0 by default) instead of crashing or stalling a run. Parsing-heavy scorers
(math-verify, reasoning-gym) run in `SafeScorer`, a persistent pool of worker processes,
each with an address-space cap (RLIMIT_AS) and a per-completion wall-clock deadline; a
worker that overruns is killed and replaced. math-verify's own SIGALRM timeouts cannot do
this: they need the main thread, count whole seconds and cannot interrupt C-level work.
The cheap rewards (exact match, format, overlong shaping) run in-process in linear time.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

RewardFn = Callable[..., list[float]]

LOG_CHARS = 200
_MAX_FAILURE_LOGS = 3  # per `SafeScorer.score` call; the rest are counted in one line


def preview(text: Any, limit: int = LOG_CHARS) -> str:
  """A bounded, single-line, ASCII rendering of untrusted text for logs."""
  text = str(text)
  if len(text) > limit:
    text = f'{text[:limit]}... [{len(text)} chars]'
  return text.encode('unicode_escape', 'backslashreplace').decode('ascii')[: 4 * limit + 64]


class TruncateLogFilter(logging.Filter):
  """Bounds every log record it sees to `preview` length and drops tracebacks.

  Scoring workers put it on their log handler: math-verify logs the whole completion when
  a parse times out, and one hostile completion would then write megabytes per call.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    record.msg = preview(record.getMessage())
    record.args = ()
    record.exc_info = None
    record.exc_text = None
    return True


def completion_text(completion: Any) -> str | None:
  """The text of one completion: a str, utf-8 bytes (invalid bytes replaced), or a
  conversational list of messages (the last message's content). None if unusable."""
  if isinstance(completion, str):
    return completion
  if isinstance(completion, (bytes, bytearray)):
    return bytes(completion).decode('utf-8', errors='replace')
  if isinstance(completion, list) and completion and isinstance(completion[-1], Mapping):
    content = completion[-1].get('content')
    return content if isinstance(content, str) else None
  return None


# --------------------------------------------------------------------------------------
# SafeScorer: a persistent process pool with memory caps and per-completion deadlines.
# --------------------------------------------------------------------------------------


def _worker_entry(conn, memory_bytes: int) -> None:
  # Imported here, in the child: the parent never loads math-verify or reasoning-gym.
  from grpo_jax._score_worker import worker_main

  worker_main(conn, memory_bytes)


def _preload_modules() -> list[str]:
  """Modules the fork server imports once, so that forked workers start in milliseconds.

  Besides the scoring module, multiprocessing re-runs the main module in every child (the
  usual `if __name__ == '__main__':` rule applies); preloading it imports its dependencies
  (e.g. JAX in a training script) once in the server instead of once per worker. This
  applies when the process starts its fork server; later calls keep the first list.
  """
  mods = ['grpo_jax._score_worker']
  main = sys.modules.get('__main__')
  spec_name = getattr(getattr(main, '__spec__', None), 'name', None)
  if spec_name and not spec_name.endswith('__main__'):
    mods.append(spec_name)
  elif spec_name is None and getattr(main, '__file__', None):
    mods.append('__main__')
  return mods


@dataclasses.dataclass
class _Worker:
  proc: Any
  conn: Any
  ready: bool = False
  deadline: float = 0.0
  queue: collections.deque = dataclasses.field(default_factory=collections.deque)


class SafeScorer:
  """Scores untrusted completions in worker processes, each job within a deadline.

  Workers are forked from a `forkserver` that has already imported math-verify and
  reasoning-gym, so replacing a killed worker costs milliseconds, and no worker is ever
  forked from a process running JAX threads. Jobs go to workers in chunks (one pipe message
  per chunk); results stream back one by one, and the deadline of each job starts when its
  predecessor's result arrives, so every completion gets its own `timeout_s`.

  Args:
    num_workers: worker processes kept alive.
    timeout_s: wall-clock limit per completion; an overrunning worker is killed. The
      default leaves 0.2 s of the 1 s budget for the pipe and the kill on a busy machine.
    memory_mb: address-space headroom per worker (RLIMIT_AS above its size at start);
      0 disables the cap.
    error_value: score of a completion that fails, overruns or exhausts memory.
    setup_timeout_s: limit for a worker's start and one-off setup (e.g. building a
      reasoning-gym dataset).
    max_chunk: most jobs sent to one worker in one message.
  """

  def __init__(
    self,
    *,
    num_workers: int = 2,
    timeout_s: float = 0.8,
    memory_mb: int = 1024,
    error_value: float = 0.0,
    setup_timeout_s: float = 60.0,
    max_chunk: int = 32,
  ):
    if num_workers < 1:
      raise ValueError(f'`num_workers` must be >= 1, got {num_workers}')
    if not timeout_s > 0:
      raise ValueError(f'`timeout_s` must be > 0, got {timeout_s}')
    if memory_mb < 0:
      raise ValueError(f'`memory_mb` must be >= 0, got {memory_mb}')
    if not math.isfinite(error_value):
      raise ValueError(f'`error_value` must be finite, got {error_value}')
    if max_chunk < 1:
      raise ValueError(f'`max_chunk` must be >= 1, got {max_chunk}')
    self.num_workers = num_workers
    self.timeout_s = float(timeout_s)
    self.memory_bytes = int(memory_mb) << 20
    self.error_value = float(error_value)
    self.setup_timeout_s = float(setup_timeout_s)
    self.max_chunk = max_chunk
    self.restarts = 0  # workers replaced after a timeout or crash, for diagnostics
    self._ctx = multiprocessing.get_context('forkserver')
    self._ctx.set_forkserver_preload(_preload_modules())
    self._workers: list[_Worker] = []
    self._dead: list = []  # killed workers not yet reaped
    self._lock = threading.Lock()
    self._closed = False

  def _start_worker(self) -> _Worker:
    parent_conn, child_conn = self._ctx.Pipe(duplex=True)
    proc = self._ctx.Process(
      target=_worker_entry, args=(child_conn, self.memory_bytes), daemon=True
    )
    proc.start()
    child_conn.close()  # so the parent sees EOF when the worker dies
    return _Worker(proc, parent_conn, deadline=time.monotonic() + self.setup_timeout_s)

  @staticmethod
  def _stop_worker(w: _Worker, dead: list) -> None:
    # SIGKILL takes effect at once; the process is reaped later, off the caller's clock.
    w.proc.kill()
    w.conn.close()
    dead.append(w.proc)

  def _reap(self) -> None:
    alive = []
    for proc in self._dead:
      proc.join(timeout=0)
      if proc.exitcode is None:
        alive.append(proc)
    self._dead = alive

  def start(self) -> SafeScorer:
    """Starts the workers and waits until they are ready (optional; `score` starts them)."""
    with self._lock:
      self._ensure_workers()
      deadline = time.monotonic() + self.setup_timeout_s
      for w in self._workers:
        while not w.ready:
          left = deadline - time.monotonic()
          if left <= 0 or not w.conn.poll(left):
            raise RuntimeError('scoring worker did not start within `setup_timeout_s`')
          if json.loads(w.conn.recv_bytes()) == ['ready']:
            w.ready = True
    return self

  def _ensure_workers(self) -> None:
    if self._closed:
      raise RuntimeError('SafeScorer is closed')
    while len(self._workers) < self.num_workers:
      self._workers.append(self._start_worker())

  def score(self, jobs: Sequence[tuple[str, list]]) -> list[float]:
    """Runs `(kind, args)` jobs in the workers; returns one float score per job.

    A job that raises, returns a non-finite value, overruns `timeout_s` or exhausts the
    memory cap scores `error_value`.
    """
    if not jobs:
      return []
    payloads = [json.dumps([i, kind, list(args)]) for i, (kind, args) in enumerate(jobs)]
    with self._lock:
      try:
        return self._score(payloads)
      except BaseException:
        # Interrupted (e.g. KeyboardInterrupt): workers still holding jobs of this call
        # would answer them during the next one, so they are replaced.
        for w in [w for w in self._workers if w.queue]:
          self._workers.remove(w)
          self._stop_worker(w, self._dead)
        raise

  def _score(self, payloads: list[str]) -> list[float]:
    self._ensure_workers()
    results: list[float | None] = [None] * len(payloads)
    todo = collections.deque(range(len(payloads)))
    left = len(payloads)
    failed_starts = 0
    crashes = [0] * len(payloads)
    failures: list[int] = []

    def fail(w: _Worker, why: str, *, crashed: bool = False) -> None:
      nonlocal left, failed_starts
      # The job at the head of the queue is the one that overran or crashed the worker;
      # the rest go back to the front of the queue, in order. A crash may predate the job
      # (the worker was killed from outside), so a job is blamed for its second crash only.
      if w.queue and crashed and not crashes[w.queue[0]]:
        crashes[w.queue[0]] += 1
      elif w.queue:
        head = w.queue.popleft()
        results[head] = self.error_value
        left -= 1
        failures.append(head)
        if len(failures) <= _MAX_FAILURE_LOGS:
          logger.warning(
            'scoring job %s %s; scored %s: %s', head, why, self.error_value, preview(payloads[head])
          )
      else:
        failed_starts += 1
        if failed_starts > 3 * self.num_workers:
          raise RuntimeError(f'scoring workers keep failing to start ({why})')
      todo.extendleft(reversed(w.queue))
      self._workers.remove(w)
      self._stop_worker(w, self._dead)
      self.restarts += 1

    while left:
      if todo and len(self._workers) < self.num_workers:
        self._ensure_workers()  # replacements start only while work is waiting
      now = time.monotonic()
      idle = [w for w in self._workers if w.ready and not w.queue]
      for k, w in enumerate(idle):
        if not todo:
          break
        size = min(self.max_chunk, -(-len(todo) // (len(idle) - k)))
        chunk = [todo.popleft() for _ in range(size)]
        w.queue.extend(chunk)
        w.deadline = now + self.timeout_s
        try:
          body = ', '.join(payloads[i] for i in chunk)
          w.conn.send_bytes(f'{{"jobs": [{body}]}}'.encode())
        except OSError:
          fail(w, 'lost its worker', crashed=True)
      busy = [w for w in self._workers if w.queue or not w.ready]
      if not busy:
        continue
      wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
      readable = multiprocessing.connection.wait([w.conn for w in busy], timeout=wait_s)
      for w in list(busy):
        if w.conn not in readable:
          continue
        try:
          while w.conn.poll():
            msg = json.loads(w.conn.recv_bytes())
            if msg[0] == 'done':
              job = w.queue.popleft()
              if job != msg[1]:
                raise RuntimeError(f'scoring worker answered job {msg[1]}, expected {job}')
              results[job] = self.error_value if msg[2] is None else float(msg[2])
              left -= 1
              w.deadline = time.monotonic() + self.timeout_s
            elif msg[0] == 'setup':
              w.deadline = time.monotonic() + self.setup_timeout_s
            elif msg[0] == 'ready':
              w.ready = True
              w.deadline = time.monotonic() + self.timeout_s
        except (EOFError, OSError):
          fail(w, 'crashed its worker', crashed=True)
      now = time.monotonic()
      for w in list(self._workers):
        if (w.queue or not w.ready) and now > w.deadline and w.conn not in readable:
          fail(w, f'exceeded {self.timeout_s:g} s' if w.ready else 'timed out in setup')
    self._reap()
    if len(failures) > _MAX_FAILURE_LOGS:
      logger.warning(
        '%d more scoring jobs overran or crashed their worker; each scored %s',
        len(failures) - _MAX_FAILURE_LOGS,
        self.error_value,
      )
    return [float(r) for r in results]

  def worker_pids(self) -> list[int]:
    """Process ids of the live workers (for diagnostics)."""
    with self._lock:
      return [w.proc.pid for w in self._workers]

  def close(self) -> None:
    """Stops every worker."""
    with self._lock:
      self._closed = True
      for w in self._workers:
        try:
          w.conn.send_bytes(b'null')
        except OSError:
          pass
      for w in self._workers:
        w.proc.join(timeout=1)
        self._stop_worker(w, self._dead)
      for proc in self._dead:
        proc.join(timeout=5)
      self._workers, self._dead = [], []

  def __enter__(self) -> SafeScorer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


_DEFAULT_SCORER: SafeScorer | None = None


def default_scorer() -> SafeScorer:
  """The process-wide scorer (2 workers, 0.8 s deadline, 1 GiB headroom), made on first use."""
  global _DEFAULT_SCORER
  if _DEFAULT_SCORER is None:
    _DEFAULT_SCORER = SafeScorer()
    atexit.register(_DEFAULT_SCORER.close)
  return _DEFAULT_SCORER


# --------------------------------------------------------------------------------------
# Reward functions.
# --------------------------------------------------------------------------------------


def _column(columns: Mapping[str, Any], name: str, n: int, fn: str) -> list:
  if name not in columns:
    raise ValueError(f'{fn} needs the column {name!r}; got columns {sorted(columns)}')
  values = list(columns[name])
  if len(values) != n:
    raise ValueError(f'{fn}: column {name!r} has {len(values)} values for {n} completions')
  return values


def exact_match_reward(prompts, completions, **columns) -> list[float]:
  """1.0 when the completion, stripped of surrounding whitespace, equals `answer`.

  The default task's correctness: decoded completions stop at eos, so '579' matches the
  answer '579' only when the model emitted exactly those digits and then eos.
  """
  answers = _column(columns, 'answer', len(completions), 'exact_match_reward')
  out = []
  for c, a in zip(completions, answers):
    text = completion_text(c)
    out.append(float(text is not None and text.strip() == str(a).strip()))
  return out


def math_verify_reward(*, scorer: SafeScorer | None = None) -> RewardFn:
  """Correctness by math-verify against the `answer` column, run in a `SafeScorer`.

  Args:
    scorer: the pool to use (default: `default_scorer()`); unusable completions score its
      `error_value`.
  """

  def math_verify_correct(prompts, completions, **columns) -> list[float]:
    pool = scorer or default_scorer()
    answers = _column(columns, 'answer', len(completions), 'math_verify_reward')
    return _score_texts(pool, completions, lambda i, t: ('math', [t, str(answers[i])]))

  return math_verify_correct


def _score_texts(pool: SafeScorer, completions, job) -> list[float]:
  texts = [completion_text(c) for c in completions]
  idx = [i for i, t in enumerate(texts) if t is not None]
  out = [pool.error_value] * len(texts)
  for i, s in zip(idx, pool.score([job(i, texts[i]) for i in idx])):
    out[i] = s
  return out


def reasoning_gym_reward(
  name: str,
  *,
  seed: int,
  size: int,
  config: Mapping[str, Any] | None = None,
  scorer: SafeScorer | None = None,
) -> RewardFn:
  """Correctness by a reasoning-gym dataset's own scorer (`score_answer`), in a `SafeScorer`.

  The worker rebuilds the procedural dataset from (name, seed, size, config) and scores the
  completion against the entry at the `index` column. The answer is the content of the
  completion's `<answer>...</answer>` tag, or the whole stripped completion without one.
  """
  spec = json.dumps(
    {'name': name, 'seed': int(seed), 'size': int(size), 'config': dict(config or {})},
    sort_keys=True,
  )

  def reasoning_gym_correct(prompts, completions, **columns) -> list[float]:
    pool = scorer or default_scorer()
    index = _column(columns, 'index', len(completions), 'reasoning_gym_reward')
    return _score_texts(pool, completions, lambda i, t: ('reasoning_gym', [spec, int(index[i]), t]))

  return reasoning_gym_correct


DIGITS_FORMAT = r'\s*\d+\s*'
BOXED_FORMAT = r'(?s).*\\boxed\{.+\}.*'
ANSWER_TAG_FORMAT = r'(?s).*<answer>.+</answer>\s*'


def format_reward(pattern: str, *, max_chars: int = 4096, name: str = 'format') -> RewardFn:
  """1.0 when the whole completion matches `pattern` (`re.fullmatch`), else 0.0.

  Completions longer than `max_chars` score 0.0 unread, which bounds the regex's work.
  Presets: `DIGITS_FORMAT` (the default task), `BOXED_FORMAT` (math), `ANSWER_TAG_FORMAT`
  (reasoning-gym).
  """
  regex = re.compile(pattern)

  def fn(prompts, completions, **columns) -> list[float]:
    out = []
    for c in completions:
      text = completion_text(c)
      ok = text is not None and len(text) <= max_chars and regex.fullmatch(text) is not None
      out.append(float(ok))
    return out

  fn.__name__ = name
  return fn


def overlong_reward(*, max_len: int, cache_len: int) -> RewardFn:
  """DAPO overlong shaping R_len (PAPERS.md §1) as a reward of the `completion_lengths`
  column: 0 up to `max_len - cache_len` tokens, then linear down to -1 at `max_len`, and -1
  beyond. The formula is the loss family's `advantages.overlong_reward_shaping`."""
  # Deferred: the scoring workers import this module and must not pay for importing JAX.
  from grpo_jax.advantages import overlong_reward_shaping

  overlong_reward_shaping(np.zeros(0), max_len=max_len, cache_len=cache_len)  # validates

  def overlong(prompts, completions, **columns) -> list[float]:
    lengths = _column(columns, 'completion_lengths', len(completions), 'overlong_reward')
    penalty_B = overlong_reward_shaping(
      np.asarray(lengths, np.int64), max_len=max_len, cache_len=cache_len
    )
    return np.asarray(penalty_B, np.float64).tolist()

  return overlong


# --------------------------------------------------------------------------------------
# Combination.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reward:
  """A named, weighted reward function; `name` is its metrics key `train/reward/<name>`."""

  name: str
  fn: RewardFn
  weight: float = 1.0

  def __post_init__(self):
    if not self.name or '/' in self.name:
      raise ValueError(f'`name` must be non-empty without "/", got {self.name!r}')
    if not callable(self.fn):
      raise ValueError(f'`fn` of reward {self.name!r} is not callable')
    if not math.isfinite(self.weight):
      raise ValueError(f'`weight` of reward {self.name!r} must be finite, got {self.weight}')


class RewardScores(NamedTuple):
  """Weighted total and each function's raw (unweighted) values, float64 [N]."""

  total: np.ndarray
  per_fn: dict[str, np.ndarray]


class CombinedReward:
  """The weighted sum of reward functions; itself a reward function (returns the total)."""

  def __init__(self, rewards: Sequence[Reward]):
    rewards = list(rewards)
    if not rewards:
      raise ValueError('`rewards` must hold at least one Reward')
    names = [r.name for r in rewards]
    if len(set(names)) != len(names):
      raise ValueError(f'reward names must be unique, got {names}')
    self.rewards = rewards

  @property
  def names(self) -> list[str]:
    return [r.name for r in self.rewards]

  def score(self, prompts, completions, **columns) -> RewardScores:
    """Calls every function once; checks each returns one finite float per completion."""
    n = len(completions)
    if len(prompts) != n:
      raise ValueError(f'{len(prompts)} prompts for {n} completions')
    total = np.zeros(n, np.float64)
    per_fn = {}
    for r in self.rewards:
      values = r.fn(prompts, completions, **columns)
      if len(values) != n:
        raise ValueError(f'reward {r.name!r} returned {len(values)} values for {n} completions')
      try:
        arr = np.asarray(values, np.float64)
      except (TypeError, ValueError) as e:
        raise ValueError(f'reward {r.name!r} returned non-numeric values') from e
      if not np.all(np.isfinite(arr)):
        raise ValueError(f'reward {r.name!r} returned non-finite values: {arr[~np.isfinite(arr)]}')
      per_fn[r.name] = arr
      total += r.weight * arr
    return RewardScores(total, per_fn)

  def __call__(self, prompts, completions, **columns) -> list[float]:
    return self.score(prompts, completions, **columns).total.tolist()


def combine_rewards(rewards: Sequence[Reward]) -> CombinedReward:
  """Combines weighted reward functions: total = sum_i weight_i * fn_i."""
  return CombinedReward(rewards)

"""Prompt datasets: the in-house addition task, reasoning-gym by name, local JSONL files.

A task yields rows, dicts `{'prompt': str, 'answer': str, 'prompt_id': int, ...columns}`,
from a fixed held-out set (evaluation) and from the training pool. Training iteration is
a pure function of a `Cursor` (seed, position): position p reads row `order[p mod n]` of
epoch `p // n`, where each epoch's order is a permutation seeded by (seed, epoch). A run
that stores the cursor in its checkpoint therefore sees the same prompts after a resume.
Held-out rows never appear in the training pool. `task.rewards()` gives the task's default
weighted reward functions (see `grpo_jax.rewards`).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from grpo_jax import rewards as rewards_lib
from grpo_jax.tokenizer import DEFAULT_CHARS, TextTokenizer, char_tokenizer

Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Cursor:
  """Where training iteration stands: the data-order seed and the rows consumed so far."""

  seed: int
  position: int = 0

  def __post_init__(self):
    if self.position < 0:
      raise ValueError(f'Cursor `position` must be >= 0, got {self.position}')

  def to_dict(self) -> dict[str, int]:
    """A JSON-friendly form, for checkpoints."""
    return {'seed': int(self.seed), 'position': int(self.position)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> Cursor:
    unknown = set(d) - {'seed', 'position'}
    if unknown:
      raise ValueError(f'unknown Cursor fields: {sorted(unknown)}')
    return cls(seed=int(d['seed']), position=int(d['position']))


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  order = np.random.default_rng([seed, epoch]).permutation(n)
  order.setflags(write=False)
  return order


class Task(abc.ABC):
  """A prompt dataset with a held-out split, cursor-based iteration and default rewards.

  Attributes:
    name: a short label for logs.
    system_prompt: text placed before every prompt (as the system message when the
      tokenizer has a chat template), or None.
    max_answer_chars: an upper bound on a correct answer's length, or None.
  """

  name: str = 'task'
  system_prompt: str | None = None
  max_answer_chars: int | None = None

  @property
  @abc.abstractmethod
  def num_train(self) -> int:
    """Rows in the training pool."""

  @abc.abstractmethod
  def train_row(self, k: int) -> Row:
    """Row k of the training pool, 0 <= k < num_train."""

  @abc.abstractmethod
  def held_out(self) -> list[Row]:
    """The fixed evaluation rows (never in the training pool)."""

  @abc.abstractmethod
  def rewards(self, *, scorer: rewards_lib.SafeScorer | None = None) -> list[rewards_lib.Reward]:
    """The task's default weighted reward functions.

    Args:
      scorer: the worker pool for scorers that need one (default: the process-wide pool).
    """

  def take(self, cursor: Cursor, n: int) -> tuple[list[Row], Cursor]:
    """The next `n` training rows from `cursor`, and the cursor after them."""
    if n < 0:
      raise ValueError(f'`n` must be >= 0, got {n}')
    size = self.num_train
    if size == 0:
      raise ValueError(f'task {self.name!r} has no training rows')
    rows = []
    for p in range(cursor.position, cursor.position + n):
      epoch, offset = divmod(p, size)
      rows.append(self.train_row(int(_epoch_order(cursor.seed, epoch, size)[offset])))
    return rows, Cursor(cursor.seed, cursor.position + n)

  def reward_fn(
    self, *, scorer: rewards_lib.SafeScorer | None = None
  ) -> rewards_lib.CombinedReward:
    """The default rewards combined (call `.score` for the per-function values)."""
    return rewards_lib.combine_rewards(self.rewards(scorer=scorer))


def reward_columns(rows: Sequence[Row], *, repeat: int = 1) -> dict[str, list]:
  """Columns for `reward_fn(prompts, completions, **columns)`: every field but 'prompt',
  each row repeated `repeat` times in a row (one per completion of its group). A field
  missing from some rows is None there."""
  keys = sorted({k for row in rows for k in row} - {'prompt'})
  return {k: [row.get(k) for row in rows for _ in range(repeat)] for k in keys}


# --------------------------------------------------------------------------------------
# The default task: 3-digit addition.
# --------------------------------------------------------------------------------------

HELD_OUT_SEED = 20_250_101  # fixed: the held-out set must not depend on any run's seed


class AdditionTask(Task):
  """'AAA+BBB=' with zero-padded operands; the answer is the sum's digits (then eos).

  Pair k in [0, 10**(2*digits)) is (k // 10**digits, k % 10**digits). A fixed set of
  `held_out_size` pairs, drawn with `HELD_OUT_SEED`, is the evaluation set; the training
  pool is every other pair.
  """

  def __init__(self, *, digits: int = 3, held_out_size: int = 2048):
    if not 1 <= digits <= 4:
      raise ValueError(f'`digits` must be in [1, 4], got {digits}')
    num_pairs = 10 ** (2 * digits)
    if not 0 <= held_out_size < num_pairs:
      raise ValueError(f'`held_out_size` must be in [0, {num_pairs}), got {held_out_size}')
    self.digits = digits
    self.name = f'addition{digits}'
    self.max_answer_chars = digits + 1
    rng = np.random.default_rng(HELD_OUT_SEED)
    self.held_out_ids = np.sort(rng.choice(num_pairs, held_out_size, replace=False))
    self.train_ids = np.setdiff1d(np.arange(num_pairs), self.held_out_ids, assume_unique=True)

  def row(self, pair_id: int) -> Row:
    """The row of pair `pair_id` (training or held-out)."""
    a, b = divmod(int(pair_id), 10**self.digits)
    d = self.digits
    return {'prompt': f'{a:0{d}d}+{b:0{d}d}=', 'answer': str(a + b), 'prompt_id': int(pair_id)}

  @property
  def num_train(self) -> int:
    return len(self.train_ids)

  def train_row(self, k: int) -> Row:
    return self.row(self.train_ids[k])

  def held_out(self) -> list[Row]:
    return [self.row(k) for k in self.held_out_ids]

  def rewards(self, *, scorer: rewards_lib.SafeScorer | None = None) -> list[rewards_lib.Reward]:
    del scorer  # exact match and format run in-process, in linear time
    return [
      rewards_lib.Reward('correct', rewards_lib.exact_match_reward, 1.0),
      rewards_lib.Reward('format', rewards_lib.format_reward(rewards_lib.DIGITS_FORMAT), 0.0),
    ]

  @staticmethod
  def tokenizer(path: str | os.PathLike | None = None) -> TextTokenizer:
    """The task's character-level tokenizer (saved as `tokenizer.json` under `path`)."""
    return TextTokenizer(char_tokenizer(DEFAULT_CHARS, path=path))


# --------------------------------------------------------------------------------------
# reasoning-gym datasets by name.
# --------------------------------------------------------------------------------------

RG_SYSTEM_PROMPT = (
  'Answer the question. Give your final answer between <answer> and </answer> tags.'
)


class ReasoningGymTask(Task):
  """A procedural reasoning-gym dataset, scored by the dataset's own `score_answer`.

  One dataset of `held_out_size + size` items is generated offline from
  (name, dataset_seed, config); items [0, held_out_size) are held out, the rest train.
  """

  def __init__(
    self,
    name: str,
    *,
    size: int = 10_000,
    held_out_size: int = 512,
    dataset_seed: int = 0,
    config: Mapping[str, Any] | None = None,
    system_prompt: str | None = RG_SYSTEM_PROMPT,
  ):
    import reasoning_gym  # deferred: importing it takes about a second

    if size < 1 or held_out_size < 0:
      raise ValueError(f'need `size` >= 1 and `held_out_size` >= 0, got {size}, {held_out_size}')
    self.name = name
    self.system_prompt = system_prompt
    self.config = dict(config or {})
    self.dataset_seed = int(dataset_seed)
    self.held_out_size = held_out_size
    total = size + held_out_size
    try:
      self.dataset = reasoning_gym.create_dataset(
        name, seed=self.dataset_seed, size=total, **self.config
      )
    except (KeyError, ValueError, TypeError) as e:
      raise ValueError(f'reasoning-gym dataset {name!r} with config {self.config}: {e}') from e
    self._size = size
    self._total = total

  def row(self, index: int) -> Row:
    entry = self.dataset[int(index)]
    return {
      'prompt': entry['question'],
      'answer': str(entry['answer']),
      'index': int(index),
      'prompt_id': int(index),
    }

  @property
  def num_train(self) -> int:
    return self._size

  def train_row(self, k: int) -> Row:
    return self.row(self.held_out_size + k)

  def held_out(self) -> list[Row]:
    return [self.row(i) for i in range(self.held_out_size)]

  def rewards(self, *, scorer: rewards_lib.SafeScorer | None = None) -> list[rewards_lib.Reward]:
    correct = rewards_lib.reasoning_gym_reward(
      self.name, seed=self.dataset_seed, size=self._total, config=self.config, scorer=scorer
    )
    return [
      rewards_lib.Reward('correct', correct, 1.0),
      rewards_lib.Reward('format', rewards_lib.format_reward(rewards_lib.ANSWER_TAG_FORMAT), 0.0),
    ]


# --------------------------------------------------------------------------------------
# Local JSONL files of {prompt, answer} (GSM8K / MATH / DAPO-Math style).
# --------------------------------------------------------------------------------------

MATH_SYSTEM_PROMPT = None  # prompts of these datasets usually carry their own instruction


def load_jsonl(path: str | os.PathLike) -> list[Row]:
  """Reads `{prompt, answer, ...}` rows; any bad line raises naming the file and line.

  Blank lines are skipped. `prompt` must be a non-empty string; `answer` a string or a
  number (kept as its string); other fields are kept as extra columns.
  """
  path = os.fspath(path)
  rows = []
  with open(path, 'rb') as f:
    lines = f.read().split(b'\n')
  for lineno, raw in enumerate(lines, start=1):
    try:
      line = raw.decode('utf-8')
    except UnicodeDecodeError as e:
      raise ValueError(f'{path}:{lineno}: not valid UTF-8 ({e.reason})') from e
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})') from e
    if not isinstance(obj, dict):
      raise ValueError(f'{path}:{lineno}: expected a JSON object, got {type(obj).__name__}')
    prompt, answer = obj.get('prompt'), obj.get('answer')
    if not isinstance(prompt, str) or not prompt:
      raise ValueError(f'{path}:{lineno}: field "prompt" must be a non-empty string')
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
      raise ValueError(f'{path}:{lineno}: field "answer" must be a string or a number')
    if isinstance(answer, float) and not math.isfinite(answer):
      raise ValueError(f'{path}:{lineno}: field "answer" is not finite')
    if 'prompt_id' in obj:
      raise ValueError(f'{path}:{lineno}: field "prompt_id" is reserved')
    rows.append({**obj, 'prompt': prompt, 'answer': str(answer)})
  if not rows:
    raise ValueError(f'{path}: no rows')
  return rows


class JsonlTask(Task):
  """Rows from local JSONL files, scored with math-verify.

  The held-out rows come from `held_out_path`, or else are `held_out_size` rows of
  `path` chosen with a fixed seed (and removed from training).
  """

  def __init__(
    self,
    path: str | os.PathLike,
    *,
    held_out_path: str | os.PathLike | None = None,
    held_out_size: int = 0,
    system_prompt: str | None = MATH_SYSTEM_PROMPT,
  ):
    rows = load_jsonl(path)
    for i, row in enumerate(rows):
      row['prompt_id'] = i
    self.name = os.path.basename(os.fspath(path))
    self.system_prompt = system_prompt
    if held_out_path is not None:
      if held_out_size:
        raise ValueError('give either `held_out_path` or `held_out_size`, not both')
      self._held = load_jsonl(held_out_path)
      for i, row in enumerate(self._held):
        row['prompt_id'] = len(rows) + i
      self._train = rows
    else:
      if not 0 <= held_out_size < len(rows):
        raise ValueError(f'`held_out_size` must be in [0, {len(rows)}), got {held_out_size}')
      held = np.random.default_rng(HELD_OUT_SEED).permutation(len(rows))[:held_out_size]
      held_set = set(held.tolist())
      self._held = [rows[i] for i in sorted(held_set)]
      self._train = [row for i, row in enumerate(rows) if i not in held_set]

  @property
  def num_train(self) -> int:
    return len(self._train)

  def train_row(self, k: int) -> Row:
    return dict(self._train[k])

  def held_out(self) -> list[Row]:
    return [dict(r) for r in self._held]

  def rewards(self, *, scorer: rewards_lib.SafeScorer | None = None) -> list[rewards_lib.Reward]:
    return [
      rewards_lib.Reward('correct', rewards_lib.math_verify_reward(scorer=scorer), 1.0),
      rewards_lib.Reward('format', rewards_lib.format_reward(rewards_lib.BOXED_FORMAT), 0.0),
    ]


def make_task(spec: str, **kwargs) -> Task:
  """A task from a config string: 'addition', 'reasoning_gym:<dataset name>', or a path
  to a `.jsonl` file. Keyword arguments go to the task's constructor."""
  if spec == 'addition':
    return AdditionTask(**kwargs)
  if spec.startswith('reasoning_gym:'):
    return ReasoningGymTask(spec.split(':', 1)[1], **kwargs)
  if spec.endswith('.jsonl'):
    return JsonlTask(spec, **kwargs)
  raise ValueError(
    f"unknown task {spec!r}: expected 'addition', 'reasoning_gym:<name>' or a .jsonl path"
  )

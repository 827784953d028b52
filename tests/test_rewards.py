"""Reward functions, their combination, and bounded scoring of hostile completions."""

import io
import logging
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import reasoning_gym

from grpo_jax import rewards
from grpo_jax.rewards import (
  ANSWER_TAG_FORMAT,
  BOXED_FORMAT,
  DIGITS_FORMAT,
  Reward,
  SafeScorer,
  combine_rewards,
  exact_match_reward,
  format_reward,
  math_verify_reward,
  overlong_reward,
  reasoning_gym_reward,
)
from grpo_jax.tasks import Cursor, JsonlTask, ReasoningGymTask, reward_columns

BOUND_S = 1.0  # wall-clock per completion, measured from outside the reward function
MEMORY_MB = 512


@pytest.fixture(scope='module')
def scorer():
  with SafeScorer(num_workers=2, memory_mb=MEMORY_MB) as s:
    yield s.start()


# ------------------------------------------------------------------------------------
# In-process rewards.
# ------------------------------------------------------------------------------------


def test_exact_match_strips_whitespace_only():
  got = exact_match_reward(['p'] * 5, ['579', ' 579\n', '5790', '57 9', b'579'], answer=['579'] * 5)
  assert got == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_exact_match_needs_the_answer_column():
  with pytest.raises(ValueError, match="column 'answer'"):
    exact_match_reward(['p'], ['1'], solution=['1'])
  with pytest.raises(ValueError, match='2 values for 1 completions'):
    exact_match_reward(['p'], ['1'], answer=['1', '2'])


@pytest.mark.parametrize(
  'pattern, text, expected',
  [
    (DIGITS_FORMAT, '1234', 1.0),
    (DIGITS_FORMAT, '12a', 0.0),
    (BOXED_FORMAT, 'so \\boxed{3}.', 1.0),
    (BOXED_FORMAT, 'so 3', 0.0),
    (ANSWER_TAG_FORMAT, 'think <answer>4</answer>', 1.0),
    (ANSWER_TAG_FORMAT, '<answer>4</answer> trailing', 0.0),
  ],
)
def test_format_reward(pattern, text, expected):
  assert format_reward(pattern)(['p'], [text]) == [expected]


def test_format_reward_rejects_overlong_text_unread():
  fn = format_reward(DIGITS_FORMAT, max_chars=8)
  assert fn(['p', 'p'], ['12345678', '123456789']) == [1.0, 0.0]


def test_overlong_reward_matches_dapo_formula():
  # L_max = 20, L_cache = 4: free up to 16 tokens, then -1/4 per token down to -1 at 20.
  fn = overlong_reward(max_len=20, cache_len=4)
  lengths = [0, 16, 17, 18, 20, 21, 100]
  got = fn(['p'] * 7, ['c'] * 7, completion_lengths=lengths)
  assert got == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0]
  with pytest.raises(ValueError, match='cache_len'):
    overlong_reward(max_len=4, cache_len=5)
  with pytest.raises(ValueError, match="column 'completion_lengths'"):
    fn(['p'], ['c'])


@pytest.mark.parametrize(
  'completion',
  [None, 12, '\ud800' * (1 << 20), b'\xff' * (1 << 20), '7' * (1 << 20), [{'role': 'x'}]],
  ids=['none', 'int', 'surrogates', 'bad_utf8', 'megabyte_digits', 'bad_message'],
)
def test_in_process_rewards_handle_hostile_completions(completion):
  t0 = time.monotonic()
  assert exact_match_reward(['p'], [completion], answer=['7']) == [0.0]
  for pattern in (DIGITS_FORMAT, BOXED_FORMAT, ANSWER_TAG_FORMAT):
    assert format_reward(pattern)(['p'], [completion]) == [0.0]
  assert time.monotonic() - t0 < BOUND_S


def test_conversational_completion_uses_last_message():
  completion = [{'role': 'assistant', 'content': ' 7 '}]
  assert exact_match_reward(['p'], [completion], answer=['7']) == [1.0]


def test_combine_weights_and_keeps_each_function():
  combined = combine_rewards(
    [
      Reward('correct', exact_match_reward, 1.0),
      Reward('format', format_reward(DIGITS_FORMAT), 0.5),
      Reward('overlong', overlong_reward(max_len=4, cache_len=2), 2.0),
    ]
  )
  prompts, completions = ['p'] * 3, ['12', '13', 'x']
  scores = combined.score(prompts, completions, answer=['12'] * 3, completion_lengths=[2, 3, 5])
  np.testing.assert_array_equal(scores.per_fn['correct'], [1, 0, 0])
  np.testing.assert_array_equal(scores.per_fn['format'], [1, 1, 0])
  np.testing.assert_array_equal(scores.per_fn['overlong'], [0, -0.5, -1])
  np.testing.assert_array_equal(scores.total, [1.5, -0.5, -2.0])
  assert combined(prompts, completions, answer=['12'] * 3, completion_lengths=[2, 3, 5]) == [
    1.5,
    -0.5,
    -2.0,
  ]


def test_combine_names_the_function_that_misbehaves():
  nan = Reward('broken', lambda prompts, completions, **_: [float('nan')] * len(completions))
  short = Reward('short', lambda prompts, completions, **_: [])
  with pytest.raises(ValueError, match="'broken' returned non-finite"):
    combine_rewards([nan])(['p'], ['c'])
  with pytest.raises(ValueError, match="'short' returned 0 values for 1"):
    combine_rewards([short])(['p'], ['c'])
  with pytest.raises(ValueError, match='unique'):
    combine_rewards([short, short])


# ------------------------------------------------------------------------------------
# Worker-pool scoring.
# ------------------------------------------------------------------------------------


def test_math_verify_scores_equivalent_answers(scorer):
  fn = math_verify_reward(scorer=scorer)
  completions = ['so \\boxed{\\frac{1}{2}}', 'the answer is $0.5$', '\\boxed{2}', 'no idea']
  assert fn(['p'] * 4, completions, answer=['1/2'] * 4) == [1.0, 1.0, 0.0, 0.0]


HOSTILE = {
  'power_tower': '10**10**10',
  'latex_power_tower': '\\boxed{10^{10^{10}}}',
  'factorial_tower': '\\boxed{((9!)!)!}',
  'deep_parens': '(' * 100_000 + ')' * 100_000,
  'deep_latex_nesting': '\\boxed{' + '\\sqrt{' * 3000 + '2' + '}' * 3000 + '}',
  'deep_braces': '\\boxed{' + '{' * 50_000 + '1' + '}' * 50_000 + '}',
  'megabyte_text': 'x' * (1 << 20),
  'megabyte_sum': '\\boxed{' + '1+' * (1 << 19) + '1}',
  'invalid_unicode_str': '\ud800\udfff\udc00' * 1000 + '\\boxed{\ud800}',
  'invalid_utf8_bytes': b'\xff\xfe\\boxed{\x80\xc3}' * 1000,
  'latex_macro_bomb': '\\def\\a{\\a\\a}\\a \\boxed{\\a}',
  'matrix_bomb': '\\boxed{' + '\\begin{pmatrix}' * 500 + '1' + '\\end{pmatrix}' * 500 + '}',
  'huge_float': '\\boxed{1e999999999}',
}


@pytest.mark.parametrize('name', sorted(HOSTILE))
def test_hostile_completion_scores_zero_within_bound(scorer, name):
  fn = math_verify_reward(scorer=scorer)
  t0 = time.monotonic()
  got = fn(['p'], [HOSTILE[name]], answer=['7'])
  elapsed = time.monotonic() - t0
  assert got == [0.0]
  assert elapsed < BOUND_S, f'{name} took {elapsed:.2f} s'


def test_batch_mixing_hostile_and_good_completions(scorer):
  fn = math_verify_reward(scorer=scorer)
  restarts = scorer.restarts
  completions = ['\\boxed{7}', '10**10**10', 'it is 7', '\\boxed{10^{10^{10}}}', '\\boxed{8}'] * 2
  t0 = time.monotonic()
  got = fn(['p'] * 10, completions, answer=['7'] * 10)
  elapsed = time.monotonic() - t0
  assert got == [1.0, 0.0, 1.0, 0.0, 0.0] * 2
  assert scorer.restarts - restarts == 4  # each overrunning completion cost one worker
  assert elapsed < BOUND_S * len(completions)
  # The replacements serve the next call.
  assert fn(['p'], ['\\boxed{7}'], answer=['7']) == [1.0]


def test_workers_have_an_address_space_cap(scorer):
  pids = scorer.start().worker_pids()  # start() waits until replacements are ready
  assert len(pids) == 2
  for pid in pids:
    soft, hard = resource.prlimit(pid, resource.RLIMIT_AS)
    assert soft == hard != resource.RLIM_INFINITY
    with open(f'/proc/{pid}/statm') as f:
      size = int(f.read().split()[0]) * resource.getpagesize()
    # The cap is the worker's start-up size plus the configured headroom.
    assert size < soft <= size + (MEMORY_MB << 20)


def test_failure_logs_are_capped_per_call(scorer, caplog):
  fn = math_verify_reward(scorer=scorer)
  with caplog.at_level(logging.WARNING, logger='grpo_jax.rewards'):
    assert fn(['p'] * 5, ['10**10**10'] * 5, answer=['7'] * 5) == [0.0] * 5
  messages = [r.getMessage() for r in caplog.records]
  assert len(messages) == 4 and messages[-1].startswith('2 more scoring jobs')


def test_timeout_log_line_is_truncated(scorer, caplog):
  fn = math_verify_reward(scorer=scorer)
  with caplog.at_level(logging.WARNING, logger='grpo_jax.rewards'):
    assert fn(['p'], ['\\boxed{10^{10^{10}}}' + 'y' * (1 << 20)], answer=['7']) == [0.0]
  (record,) = caplog.records
  assert 'exceeded' in record.getMessage()
  assert len(record.getMessage()) < 2000


def test_worker_log_filter_truncates_math_verify_warning():
  # math-verify's parse-timeout warning embeds the whole completion.
  stream = io.StringIO()
  handler = logging.StreamHandler(stream)
  handler.addFilter(rewards.TruncateLogFilter())
  log = logging.getLogger('math_verify.parser.test')
  log.propagate = False
  log.addHandler(handler)
  try:
    log.warning('Timeout during parsing: %s', 'q' * (1 << 20))
  finally:
    log.removeHandler(handler)
  out = stream.getvalue()
  assert out.startswith('Timeout during parsing: qqq') and len(out) < 1000


def test_worker_killed_from_outside_is_replaced(scorer):
  fn = math_verify_reward(scorer=scorer)
  pids = scorer.start().worker_pids()
  os.kill(pids[0], signal.SIGKILL)
  restarts = scorer.restarts
  assert fn(['p'] * 4, ['\\boxed{7}', '6', '7', 'x'], answer=['7'] * 4) == [1.0, 0.0, 1.0, 0.0]
  assert scorer.restarts == restarts + 1
  assert pids[0] not in scorer.worker_pids()


def test_preview_bounds_hostile_text():
  text = rewards.preview('\ud800' + 'z' * (1 << 20))
  assert len(text) < 1000 and text.isascii() and '[1048577 chars]' in text


def test_reasoning_gym_item_scored_by_its_own_scorer(scorer):
  task = ReasoningGymTask('chain_sum', size=20, held_out_size=4, dataset_seed=3)
  rows, _ = task.take(Cursor(seed=0), 3)
  fn = reasoning_gym_reward('chain_sum', seed=3, size=24, scorer=scorer)
  right, wrong = rows[0]['answer'], str(int(rows[1]['answer']) + 1)
  completions = [f'<think>sum</think><answer>{right}</answer>', wrong, 'no answer']
  got = fn(['p'] * 3, completions, index=[r['index'] for r in rows])
  # Reference: the dataset's scorer, called directly on an independently built dataset.
  ds = reasoning_gym.create_dataset('chain_sum', seed=3, size=24)
  expected = [
    ds.score_answer(right, ds[rows[0]['index']]),
    ds.score_answer(wrong, ds[rows[1]['index']]),
    ds.score_answer('no answer', ds[rows[2]['index']]),
  ]
  assert got == expected == [1.0, 0.0, 0.0]


def test_scorer_rejects_bad_arguments():
  with pytest.raises(ValueError, match='timeout_s'):
    SafeScorer(timeout_s=0)
  with pytest.raises(ValueError, match='num_workers'):
    SafeScorer(num_workers=0)


def test_jsonl_task_rewards_use_math_verify(scorer, tmp_path):
  train = tmp_path / 'train.jsonl'
  train.write_text('{"prompt": "1/2 + 1/2 + 1/2?", "answer": "\\\\frac{3}{2}"}\n')
  held = tmp_path / 'test.jsonl'
  held.write_text('{"prompt": "2+2?", "answer": 4}\n')
  task = JsonlTask(train, held_out_path=held)
  assert task.held_out() == [{'prompt': '2+2?', 'answer': '4', 'prompt_id': 1}]
  rows, _ = task.take(Cursor(seed=0), 1)
  scores = task.reward_fn(scorer=scorer).score(
    ['p'] * 3,
    ['so \\boxed{1.5}', 'so \\boxed{3/2}.', '\\boxed{2}'],
    **reward_columns(rows, repeat=3),
  )
  np.testing.assert_array_equal(scores.per_fn['correct'], [1, 1, 0])
  np.testing.assert_array_equal(scores.per_fn['format'], [1, 1, 1])


ORPHAN_SCRIPT = """
import sys
from grpo_jax.rewards import SafeScorer
if __name__ == '__main__':
  s = SafeScorer(timeout_s=100).start()
  print(' '.join(map(str, s.worker_pids())), flush=True)
  s.score([('math', ['10**10**10', '1'])])
"""


@pytest.mark.slow
def test_workers_die_with_a_killed_trainer(tmp_path):
  script = tmp_path / 'run.py'
  script.write_text(ORPHAN_SCRIPT)
  with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as proc:
    pids = [int(p) for p in proc.stdout.readline().split()]
    time.sleep(0.5)  # a worker is now deep in 10**10**10
    proc.kill()
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline and any(_running(p) for p in pids):
    time.sleep(0.1)
  assert len(pids) == 2
  assert not [p for p in pids if _running(p)]


def _running(pid: int) -> bool:
  """Whether the process exists and is not a zombie awaiting its reaper."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except FileNotFoundError:
    return False

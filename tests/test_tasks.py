"""Tasks: the addition task's rows and held-out split, cursor iteration, JSONL loading."""

import json

import numpy as np
import pytest

from grpo_jax.tasks import (
  AdditionTask,
  Cursor,
  JsonlTask,
  ReasoningGymTask,
  load_jsonl,
  make_task,
  reward_columns,
)


@pytest.fixture(scope='module')
def addition():
  return AdditionTask()


def test_addition_rows_are_zero_padded_with_the_sum_as_answer(addition):
  assert addition.row(7 * 1000 + 93) == {'prompt': '007+093=', 'answer': '100', 'prompt_id': 7093}
  assert addition.row(999_999) == {'prompt': '999+999=', 'answer': '1998', 'prompt_id': 999_999}
  rows, _ = addition.take(Cursor(seed=3), 50)
  for r in rows:
    a, b = r['prompt'][:-1].split('+')
    assert len(a) == len(b) == 3 and int(r['answer']) == int(a) + int(b)


def test_held_out_is_fixed_and_disjoint_from_training(addition):
  held = addition.held_out()
  assert len(held) == len({r['prompt'] for r in held}) == 2048
  assert held == AdditionTask().held_out()  # independent of any seed
  ids = np.asarray([r['prompt_id'] for r in held])
  assert np.intersect1d(ids, addition.train_ids).size == 0
  assert addition.num_train + 2048 == 1_000_000
  held_prompts = {r['prompt'] for r in held}
  rows, _ = addition.take(Cursor(seed=0), 2000)
  assert not held_prompts & {r['prompt'] for r in rows}


def test_one_epoch_visits_every_training_pair_once():
  task = AdditionTask(digits=2, held_out_size=500)
  rows, cursor = task.take(Cursor(seed=1), task.num_train)
  ids = sorted(r['prompt_id'] for r in rows)
  np.testing.assert_array_equal(ids, task.train_ids)
  assert cursor == Cursor(seed=1, position=9500)
  # The next epoch is a different order of the same pool.
  nxt, _ = task.take(cursor, task.num_train)
  assert sorted(r['prompt_id'] for r in nxt) == ids
  assert [r['prompt_id'] for r in nxt] != [r['prompt_id'] for r in rows]


def test_resuming_from_a_cursor_repeats_the_same_prompts(addition):
  full, end = addition.take(Cursor(seed=5), 40)
  first, mid = addition.take(Cursor(seed=5), 17)
  restored = Cursor.from_dict(json.loads(json.dumps(mid.to_dict())))
  rest, end2 = addition.take(restored, 23)
  assert first + rest == full and end == end2
  other, _ = addition.take(Cursor(seed=6), 40)
  assert other != full


def test_cursor_rejects_bad_fields():
  with pytest.raises(ValueError, match='position'):
    Cursor(seed=0, position=-1)
  with pytest.raises(ValueError, match='unknown Cursor fields'):
    Cursor.from_dict({'seed': 0, 'position': 0, 'epoch': 1})


def test_addition_rejects_bad_sizes():
  with pytest.raises(ValueError, match='held_out_size'):
    AdditionTask(digits=1, held_out_size=2048)
  with pytest.raises(ValueError, match='digits'):
    AdditionTask(digits=0)


def test_reward_columns_repeat_each_row_per_completion():
  rows = [{'prompt': 'p', 'answer': '1', 'prompt_id': 0}, {'prompt': 'q', 'answer': '2'}]
  assert reward_columns(rows, repeat=2) == {
    'answer': ['1', '1', '2', '2'],
    'prompt_id': [0, 0, None, None],
  }


def test_addition_default_rewards_score_exact_answers(addition):
  rows, _ = addition.take(Cursor(seed=0), 2)
  fn = addition.reward_fn()
  completions = [rows[0]['answer'], rows[0]['answer'] + '0', rows[1]['answer'], 'x']
  scores = fn.score(
    [r['prompt'] for r in rows for _ in range(2)], completions, **reward_columns(rows, repeat=2)
  )
  np.testing.assert_array_equal(scores.per_fn['correct'], [1, 0, 1, 0])
  np.testing.assert_array_equal(scores.per_fn['format'], [1, 1, 1, 0])
  np.testing.assert_array_equal(scores.total, [1, 0, 1, 0])  # format has weight 0


def _write(path, lines):
  path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
  return path


def test_jsonl_rows_and_held_out_split(tmp_path):
  lines = [json.dumps({'prompt': f'q{i}', 'answer': i, 'level': i % 3}) for i in range(10)]
  path = _write(tmp_path / 'd.jsonl', lines[:5] + [''] + lines[5:])
  rows = load_jsonl(path)
  assert rows[3] == {'prompt': 'q3', 'answer': '3', 'level': 0}
  task = JsonlTask(path, held_out_size=3)
  held = {r['prompt'] for r in task.held_out()}
  train, _ = task.take(Cursor(seed=0), task.num_train)
  assert len(held) == 3 and task.num_train == 7
  assert held.isdisjoint(r['prompt'] for r in train)
  assert held | {r['prompt'] for r in train} == {f'q{i}' for i in range(10)}


@pytest.mark.parametrize(
  'bad_line, message',
  [
    ('{"prompt": "q", "answer": "1"', 'invalid JSON'),
    ('["q", "1"]', 'expected a JSON object'),
    ('{"answer": "1"}', '"prompt"'),
    ('{"prompt": "q", "answer": null}', '"answer"'),
    ('{"prompt": "q", "answer": true}', '"answer"'),
  ],
)
def test_malformed_jsonl_line_names_file_and_line(tmp_path, bad_line, message):
  good = json.dumps({'prompt': 'q', 'answer': '1'})
  path = _write(tmp_path / 'math.jsonl', [good, '', good, bad_line, good])
  with pytest.raises(ValueError, match=f'math.jsonl:4: .*{message}'):
    load_jsonl(path)


def test_invalid_utf8_line_names_its_line(tmp_path):
  path = tmp_path / 'bin.jsonl'
  path.write_bytes(b'{"prompt": "q", "answer": "1"}\n{"prompt": "\xff", "answer": "1"}\n')
  with pytest.raises(ValueError, match='bin.jsonl:2: not valid UTF-8'):
    load_jsonl(path)


def test_make_task_dispatches_and_rejects_unknown(tmp_path):
  path = _write(tmp_path / 'x.jsonl', [json.dumps({'prompt': 'q', 'answer': '1'})])
  assert isinstance(make_task('addition', digits=1, held_out_size=10), AdditionTask)
  assert isinstance(make_task(str(path)), JsonlTask)
  with pytest.raises(ValueError, match='unknown task'):
    make_task('gsm8k')


def test_reasoning_gym_task_splits_one_procedural_dataset():
  task = ReasoningGymTask('chain_sum', size=30, held_out_size=5, dataset_seed=7)
  held = task.held_out()
  train, _ = task.take(Cursor(seed=0), 30)
  assert [r['index'] for r in held] == list(range(5))
  assert sorted(r['index'] for r in train) == list(range(5, 35))
  entry = task.dataset[12]
  assert task.row(12) == {
    'prompt': entry['question'],
    'answer': entry['answer'],
    'index': 12,
    'prompt_id': 12,
  }
  with pytest.raises(ValueError, match='no_such_dataset'):
    ReasoningGymTask('no_such_dataset', size=3)

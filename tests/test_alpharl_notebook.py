"""notebooks/alpharl.ipynb executes end to end within 60 s, training its own tiny run."""

from _notebooks import execute


def test_alpharl_notebook_runs_on_a_fresh_tiny_run(tmp_path, monkeypatch):
  run_dir = tmp_path / 'run'
  monkeypatch.setenv('ALPHARL_RUN', str(run_dir))  # absent: the notebook trains it
  text, images = execute('alpharl.ipynb')
  assert (run_dir / 'checkpoints' / '5').is_dir()
  assert f'run {run_dir}: checkpoints at steps {list(range(6))}' in text
  assert 'linearity R^2 (all checkpoints, pooled over components), 14 matrices' in text
  assert 'speedup if the prediction replaces training: 2.50x' in text
  assert images == 3

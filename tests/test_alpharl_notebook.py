"""notebooks/alpharl.ipynb executes end to end within 60 s, training its own tiny run."""

import pathlib
import time

import nbclient
import nbformat

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / 'notebooks' / 'alpharl.ipynb'


def test_alpharl_notebook_runs_on_a_fresh_tiny_run(tmp_path, monkeypatch):
  run_dir = tmp_path / 'run'
  monkeypatch.setenv('ALPHARL_RUN', str(run_dir))  # absent: the notebook trains it
  nb = nbformat.read(NOTEBOOK, as_version=4)
  start = time.monotonic()
  client = nbclient.NotebookClient(
    nb, timeout=60, kernel_name='python3', resources={'metadata': {'path': str(NOTEBOOK.parent)}}
  )
  client.execute()  # raises CellExecutionError on any failing cell (the notebook asserts)
  assert time.monotonic() - start <= 60
  assert (run_dir / 'checkpoints' / '5').is_dir()
  text = ''.join(
    o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
  )
  assert f'run {run_dir}: checkpoints at steps {list(range(6))}' in text
  assert 'linearity R^2 (all checkpoints, pooled over components), 14 matrices' in text
  assert 'speedup if the prediction replaces training: 2.50x' in text
  images = sum(
    'image/png' in o.get('data', {})
    for c in nb.cells
    if c.cell_type == 'code'
    for o in c.get('outputs', [])
  )
  assert images == 3

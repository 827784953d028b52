"""notebooks/gxpo.ipynb (the quadratic walk-through, a short tiny-task run) executes in <= 60 s."""

import pathlib
import time

import nbclient
import nbformat

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / 'notebooks' / 'gxpo.ipynb'


def test_gxpo_notebook_runs_and_checks_corollary_2():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  start = time.monotonic()
  client = nbclient.NotebookClient(
    nb, timeout=60, kernel_name='python3', resources={'metadata': {'path': str(NOTEBOOK.parent)}}
  )
  client.execute()  # raises CellExecutionError on any failing cell (the notebook asserts)
  assert time.monotonic() - start <= 60
  text = ''.join(
    o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
  )
  assert 'max |gxpo step - (K+1) GD steps|' in text
  assert text.count('backward passes = 3') == 3
  # Section 5 reads a short run of experiments/gxpo_table.py: every method's backward passes
  # per step follow PAPERS.md §2-3 (GRPO 1, SFPO K+1, GXPO 3 while active).
  assert text.count('matches the accounting: True') == 4
  assert 'passes per step [1.0, 3.0]' in text  # GXPO K=10 shut off within the run

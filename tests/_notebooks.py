"""Executes a notebook of notebooks/ as a user would, within a time limit."""

import pathlib
import time

import nbclient
import nbformat

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / 'notebooks'


def execute(name: str, *, limit_s: float = 60.0) -> tuple[str, int]:
  """Runs every cell of `notebooks/<name>` in a fresh kernel.

  Raises `CellExecutionError` on any failing cell (the notebooks assert their own checks)
  and fails if the whole run takes longer than `limit_s`.

  Returns:
    The text of every cell's output, concatenated, and the number of PNG images shown.
  """
  path = NOTEBOOKS / name
  nb = nbformat.read(path, as_version=4)
  start = time.monotonic()
  client = nbclient.NotebookClient(
    nb, timeout=limit_s, kernel_name='python3', resources={'metadata': {'path': str(NOTEBOOKS)}}
  )
  client.execute()
  elapsed = time.monotonic() - start
  assert elapsed <= limit_s, f'{name} took {elapsed:.0f} s (limit {limit_s:.0f} s)'
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
  text = ''.join(o.get('text', '') for o in outputs)
  images = sum('image/png' in o.get('data', {}) for o in outputs)
  return text, images

"""notebooks/gxpo.ipynb (the quadratic walk-through, a short tiny-task run) executes in <= 60 s."""

from _notebooks import execute


def test_gxpo_notebook_runs_and_checks_corollary_2():
  text, _ = execute('gxpo.ipynb')
  assert 'max |gxpo step - (K+1) GD steps|' in text
  assert text.count('backward passes = 3') == 3
  # Section 5 reads a short run of experiments/gxpo_table.py: every method's backward passes
  # per step follow PAPERS.md §2-3 (GRPO 1, SFPO K+1, GXPO 3 while active).
  assert text.count('matches the accounting: True') == 4
  assert 'passes per step [1.0, 3.0]' in text  # GXPO K=10 shut off within the run

"""Experiment studies: the logic behind `experiments/*.py` tables and figures (PAPERS.md §2-5)."""

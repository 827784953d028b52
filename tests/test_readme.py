"""The README's Python snippets run as written (the checkpoint path swapped for a local one)."""

import re
import string
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / 'README.md'
CHECKPOINT_PATH = "'/data/Qwen2.5-Math-1.5B'"


def _snippets() -> list[str]:
  return re.findall(r'```python\n(.*?)```', README.read_text(encoding='utf-8'), flags=re.S)


def _tiny_checkpoint(path: Path) -> None:
  """A random tiny decoder exported in the HF layout, with a char tokenizer and chat template."""
  from grpo_jax.models import create_decoder, export_hf, model_preset
  from grpo_jax.tokenizer import char_tokenizer

  tok = char_tokenizer(string.printable)
  tok.chat_template = (
    "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    '{% if add_generation_prompt %}={% endif %}'
  )
  tok.save_pretrained(str(path))
  cfg = model_preset('tiny', vocab_size=len(tok), eos_token_ids=(tok.eos_token_id,))
  export_hf(create_decoder(cfg, seed=0), cfg, path)


def test_readme_has_the_documented_snippets():
  snippets = _snippets()
  assert len(snippets) >= 3
  assert sum(CHECKPOINT_PATH in s for s in snippets) == 1


@pytest.mark.parametrize('index', range(len(_snippets())))
def test_readme_snippet_runs(index, tmp_path, capsys):
  code = _snippets()[index]
  if CHECKPOINT_PATH in code:
    _tiny_checkpoint(tmp_path)
    code = code.replace(CHECKPOINT_PATH, repr(str(tmp_path)))
  namespace: dict = {'__name__': '__readme__'}
  exec(compile(code, f'README.md snippet {index}', 'exec'), namespace)  # noqa: S102
  assert capsys.readouterr().out.strip(), 'every snippet prints its result'
  if 'gxpo(' in code:
    h = np.array([1.0, 0.5, 0.25])
    expected = (1 - 0.5 * h) ** 4 * np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(np.asarray(namespace['params']), expected, rtol=1e-6)

"""Character tokenizer and the TextTokenizer protocol (tiny default and HF-style alike)."""

import json

import numpy as np
import pytest
import transformers

from grpo_jax.tokenizer import DEFAULT_CHARS, TextTokenizer, char_tokenizer

# A minimal chat template in the style of Qwen's, enough to exercise the chat path.
CHAT_TEMPLATE = (
  '{% for m in messages %}<bos>{{ m["role"][0] }}={{ m["content"] }}<eos>{% endfor %}'
  '{% if add_generation_prompt %}<bos>a={% endif %}'
)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  path = tmp_path_factory.mktemp('tok')
  char_tokenizer(path=path)
  return path


def test_ids_are_pinned():
  tok = char_tokenizer()
  # <pad>=0 <bos>=1 <eos>=2 <unk>=3, then '0123456789+=' from 4.
  assert tok('123+456=')['input_ids'] == [1, 5, 6, 7, 14, 8, 9, 10, 15]
  assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
  assert len(tok) == 4 + len(DEFAULT_CHARS)


def test_unknown_character_maps_to_unk():
  assert char_tokenizer()('1x\n', add_special_tokens=False)['input_ids'] == [5, 3, 3]


def test_saved_file_loads_with_pretrained_tokenizer_fast(saved):
  assert (saved / 'tokenizer.json').exists()
  hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(saved))
  assert hf('907+093=')['input_ids'] == char_tokenizer()('907+093=')['input_ids']
  assert (hf.pad_token, hf.bos_token, hf.eos_token) == ('<pad>', '<bos>', '<eos>')
  # The raw tokenizer.json is the `tokenizers` library's format.
  assert json.loads((saved / 'tokenizer.json').read_text())['model']['type'] == 'WordLevel'


def test_round_trip_through_text_tokenizer(saved):
  tok = TextTokenizer.load(saved)
  texts = ['000+000=', '999+999=', '1998', '']
  ids = tok.encode_completions(texts, add_eos=True)
  assert all(x[-1] == tok.eos_ids[0] for x in ids)
  assert tok.decode_completions(ids) == texts


def test_decode_stops_at_first_eos_and_honours_lengths(saved):
  tok = TextTokenizer.load(saved)
  # '5' '7' eos '9' -> '57'; second row limited to 2 ids -> '12'.
  assert tok.decode_completions(np.array([[9, 11, 2, 13], [5, 6, 7, 2]]), [4, 2]) == ['57', '12']


def test_prompts_get_bos_without_chat_template(saved):
  tok = TextTokenizer.load(saved)
  assert not tok.use_chat_template
  assert tok.encode_prompts(['1+2=']) == [[1, 5, 14, 6, 15]]
  assert tok.format_prompt('1+2=', system_prompt='9') == '9\n1+2='


def test_chat_template_is_applied_when_present(tmp_path):
  hf = char_tokenizer('0123456789+=aus')
  hf.chat_template = CHAT_TEMPLATE
  hf.save_pretrained(str(tmp_path))
  tok = TextTokenizer.load(tmp_path)
  assert tok.use_chat_template
  assert tok.format_prompt('1+2=') == '<bos>u=1+2=<eos><bos>a='
  # Special tokens come from the template only: no second <bos> is prepended.
  expected = char_tokenizer('0123456789+=aus')('<bos>u=1+2=<eos><bos>a=', add_special_tokens=False)[
    'input_ids'
  ]
  assert tok.encode_prompts(['1+2=']) == [expected]
  assert TextTokenizer(hf, use_chat_template=False).encode_prompts(['1']) == [[1, 5]]


def test_generation_config_adds_eos_ids(saved, tmp_path):
  hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(saved))
  hf.save_pretrained(str(tmp_path))
  (tmp_path / 'generation_config.json').write_text(json.dumps({'eos_token_id': [2, 15]}))
  tok = TextTokenizer.load(tmp_path)
  assert tok.eos_ids == (2, 15)
  assert tok.decode_completions([[9, 15, 9]]) == ['5']


def test_pad_left_layout(saved):
  tok = TextTokenizer.load(saved)
  tokens, valid = tok.pad_left([[7, 8], [9]], length=3)
  np.testing.assert_array_equal(tokens, [[0, 7, 8], [0, 0, 9]])
  np.testing.assert_array_equal(valid, [[False, True, True], [False, False, True]])
  with pytest.raises(ValueError, match='length'):
    tok.pad_left([[1, 2, 3, 4]], length=3)


def test_bad_alphabet_and_missing_directory_raise(tmp_path):
  with pytest.raises(ValueError, match='repeated'):
    char_tokenizer('0120')
  with pytest.raises(FileNotFoundError, match='not found'):
    TextTokenizer.load(tmp_path / 'missing')

"""Tokenizers: the in-house character-level one and a thin protocol over any HF tokenizer.

The tiny default model and a real checkpoint go through the same code path: both are
`transformers` fast tokenizers (loaded locally from a directory holding `tokenizer.json`)
wrapped by `TextTokenizer`, which encodes prompts (with the chat template when the tokenizer
has one), encodes teacher-forced answers and decodes sampled completions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, processors

PAD_TOKEN = '<pad>'
BOS_TOKEN = '<bos>'
EOS_TOKEN = '<eos>'
UNK_TOKEN = '<unk>'
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
# Enough for the addition task; callers pass their own alphabet for other tasks.
DEFAULT_CHARS = '0123456789+='


def char_tokenizer(
  chars: str = DEFAULT_CHARS, *, path: str | os.PathLike | None = None
) -> transformers.PreTrainedTokenizerFast:
  """Builds a character-level tokenizer with the `tokenizers` library.

  Ids: `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3, then `chars` in order. Encoding with
  special tokens prepends `<bos>`; decoding joins characters without separators.

  Args:
    chars: the alphabet, each character once.
    path: if given, a directory to save into (`tokenizer.json` and the transformers config
      files), loadable with `PreTrainedTokenizerFast.from_pretrained(path)` or
      `TextTokenizer.load(path)`.

  Returns:
    A `transformers.PreTrainedTokenizerFast` with pad/bos/eos/unk tokens set.
  """
  if not chars:
    raise ValueError('`chars` must be non-empty')
  if len(set(chars)) != len(chars):
    dup = sorted({c for c in chars if chars.count(c) > 1})
    raise ValueError(f'`chars` has repeated characters: {dup!r}')
  vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
  for c in chars:
    vocab[c] = len(vocab)
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
  # Every character (newlines included, hence (?s)) is its own pre-token.
  tok.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(r'[\s\S]'), behavior='isolated')
  tok.decoder = decoders.Fuse()
  tok.post_processor = processors.TemplateProcessing(
    single=f'{BOS_TOKEN} $A',
    pair=f'{BOS_TOKEN} $A $B',
    special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])],
  )
  tok.add_special_tokens(list(SPECIAL_TOKENS))
  fast = transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok,
    pad_token=PAD_TOKEN,
    bos_token=BOS_TOKEN,
    eos_token=EOS_TOKEN,
    unk_token=UNK_TOKEN,
    padding_side='left',
    clean_up_tokenization_spaces=False,
  )
  if path is not None:
    fast.save_pretrained(os.fspath(path))
  return fast


class TextTokenizer:
  """The protocol the trainer uses for every tokenizer (tiny default or HF checkpoint).

  Attributes:
    hf: the wrapped `transformers` tokenizer.
    eos_ids: token ids that end a completion (the tokenizer's eos plus any listed in the
      checkpoint's `generation_config.json`).
    pad_id: the padding id (the eos id when the tokenizer has no pad token).
    bos_id: the bos id or None.
    use_chat_template: whether prompts are wrapped in the tokenizer's chat template.
  """

  def __init__(
    self,
    hf,
    *,
    use_chat_template: bool | None = None,
    extra_eos_ids: Sequence[int] = (),
  ):
    """Wraps a transformers tokenizer.

    Args:
      hf: a `transformers` tokenizer (fast or slow).
      use_chat_template: None applies the chat template when the tokenizer has one;
        True requires one; False never applies it.
      extra_eos_ids: more ids that end a completion (e.g. Qwen's `<|im_end|>`).
    """
    has_template = bool(getattr(hf, 'chat_template', None))
    if use_chat_template and not has_template:
      raise ValueError('`use_chat_template=True` but the tokenizer has no chat template')
    self.hf = hf
    self.use_chat_template = has_template if use_chat_template is None else use_chat_template
    eos = [hf.eos_token_id] if hf.eos_token_id is not None else []
    eos += [int(i) for i in extra_eos_ids if int(i) not in eos]
    if not eos:
      raise ValueError('tokenizer has no eos token and no `extra_eos_ids` were given')
    self.eos_ids: tuple[int, ...] = tuple(eos)
    self.pad_id: int = hf.pad_token_id if hf.pad_token_id is not None else self.eos_ids[0]
    self.bos_id: int | None = hf.bos_token_id

  @classmethod
  def load(cls, path: str | os.PathLike, *, use_chat_template: bool | None = None):
    """Loads a tokenizer from a local directory (never from a hub, never remote code).

    The directory's `tokenizer.json` is loaded with `PreTrainedTokenizerFast` (the
    `transformers.AutoTokenizer` class is used only when there is none). Eos ids listed
    in the directory's `generation_config.json` are added to `eos_ids`.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
      raise FileNotFoundError(f'tokenizer directory not found: {path!r}')
    if os.path.exists(os.path.join(path, 'tokenizer.json')):
      # Every fast tokenizer (ours and modern checkpoints alike) is fully described by
      # tokenizer.json plus tokenizer_config.json; loading it directly also avoids
      # AutoTokenizer's import of torch, which costs seconds.
      hf = transformers.PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    else:
      hf = transformers.AutoTokenizer.from_pretrained(
        path, local_files_only=True, trust_remote_code=False
      )
    extra: list[int] = []
    gen_path = os.path.join(path, 'generation_config.json')
    if os.path.exists(gen_path):
      with open(gen_path, encoding='utf-8') as f:
        eos = json.load(f).get('eos_token_id')
      if eos is not None:
        extra = [eos] if isinstance(eos, int) else list(eos)
    return cls(hf, use_chat_template=use_chat_template, extra_eos_ids=extra)

  @property
  def vocab_size(self) -> int:
    """Number of ids the tokenizer can produce (added tokens included)."""
    return len(self.hf)

  def format_prompt(self, prompt: str, *, system_prompt: str | None = None) -> str:
    """The prompt text the model sees: the chat template when enabled, else the plain
    prompt (after the system prompt and a newline, if one is given)."""
    if not self.use_chat_template:
      return prompt if system_prompt is None else f'{system_prompt}\n{prompt}'
    messages = [{'role': 'user', 'content': prompt}]
    if system_prompt is not None:
      messages.insert(0, {'role': 'system', 'content': system_prompt})
    return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

  def encode_prompts(
    self, prompts: Sequence[str], *, system_prompt: str | None = None
  ) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's special tokens or chat template."""
    texts = [self.format_prompt(p, system_prompt=system_prompt) for p in prompts]
    # A chat template already holds every special token it wants.
    ids = self.hf(texts, add_special_tokens=not self.use_chat_template)['input_ids']
    return [list(x) for x in ids]

  def encode_completions(self, texts: Sequence[str], *, add_eos: bool = True) -> list[list[int]]:
    """Token ids of target completions (for teacher forcing), ending with eos if asked."""
    ids = self.hf(list(texts), add_special_tokens=False)['input_ids']
    tail = [self.eos_ids[0]] if add_eos else []
    return [list(x) + tail for x in ids]

  def decode_completions(self, ids_BN, lengths_B=None) -> list[str]:
    """Decodes sampled completions, stopping at the first eos and dropping special tokens.

    Args:
      ids_BN: completion ids, an int array or a list of id lists.
      lengths_B: optional number of valid ids per row (ids beyond are ignored).

    Returns:
      One string per row.
    """
    out = []
    eos = set(self.eos_ids)
    for b, row in enumerate(ids_BN):
      row = [int(t) for t in np.asarray(row).reshape(-1)]
      if lengths_B is not None:
        row = row[: int(lengths_B[b])]
      for n, t in enumerate(row):
        if t in eos:
          row = row[:n]
          break
      out.append(self.hf.decode(row, skip_special_tokens=True))
    return out

  def pad_left(
    self, ids: Sequence[Sequence[int]], *, length: int | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads id lists into `(tokens_BP int32, valid_BP bool)` (the sampler's layout)."""
    longest = max((len(x) for x in ids), default=0)
    length = longest if length is None else length
    if longest > length:
      raise ValueError(f'a prompt has {longest} tokens, more than `length`={length}')
    tokens_BP = np.full((len(ids), length), self.pad_id, np.int32)
    valid_BP = np.zeros((len(ids), length), bool)
    for b, row in enumerate(ids):
      if len(row):
        tokens_BP[b, length - len(row) :] = row
        valid_BP[b, length - len(row) :] = True
    return tokens_BP, valid_BP

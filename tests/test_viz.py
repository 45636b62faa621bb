from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tformer.course import viz  # noqa: E402
from tformer.nn.positional import sinusoidal_encoding  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_plot_attention_shows_the_weights_with_token_labels():
    w = torch.softmax(torch.randn(3, 4), dim=-1)
    fig = viz.plot_attention(w, ["a", "b", "c", "d"], ["x", "y", "z"], title="demo")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), w.numpy(), rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["x", "y", "z"]
    assert ax.get_title() == "demo"
    assert ax.get_xlabel() and ax.get_ylabel()


def test_plot_attention_draws_into_a_given_axes_and_accepts_chinese_labels():
    fig, (left, right) = plt.subplots(1, 2)
    out = viz.plot_attention(np.eye(2), ["我", "猫"], ["I", "cat"], ax=right, colorbar=False)
    assert out is fig
    assert right.images and not left.images
    fig.canvas.draw()  # rendering CJK labels must not fail even without a CJK font


def test_plot_attention_rejects_non_2d_weights():
    with pytest.raises(ValueError, match="must be 2-D"):
        viz.plot_attention(torch.rand(2, 3, 4))


def test_plot_attention_rejects_label_count_mismatch():
    with pytest.raises(ValueError, match="x_labels has 2 labels but the weights have 3"):
        viz.plot_attention(torch.rand(2, 3), x_labels=["a", "b"])
    with pytest.raises(ValueError, match="y_labels has 3 labels"):
        viz.plot_attention(torch.rand(2, 3), y_labels=["a", "b", "c"])
    with pytest.raises(TypeError, match="single string"):
        viz.plot_attention(torch.rand(2, 3), x_labels="abc")


def test_plot_attention_rejects_a_non_axes_ax():
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        viz.plot_attention(torch.rand(2, 2), ax="left")


def test_plot_attention_heads_draws_one_panel_per_head():
    w = torch.softmax(torch.randn(6, 3, 3), dim=-1)
    fig = viz.plot_attention_heads(w, ["a", "b", "c"], ["a", "b", "c"], ncols=4)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 6
    for i, ax in enumerate(panels):
        assert ax.get_title() == f"head {i}"
        np.testing.assert_allclose(ax.images[0].get_array(), w[i].numpy(), rtol=1e-6)
    assert fig._suptitle is not None


def test_plot_attention_heads_rejects_a_batch():
    with pytest.raises(ValueError, match="num_heads, T_q, T_k"):
        viz.plot_attention_heads(torch.rand(2, 4, 3, 3))


def test_plot_positional_encoding_shows_the_table():
    pe = sinusoidal_encoding(20, 16)
    fig = viz.plot_positional_encoding(pe)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), pe.numpy(), rtol=1e-6)
    assert ax.get_xlabel() == "dimension (columns 2i and 2i + 1 form pair i)" and ax.get_ylabel() == "position pos"
    assert ax.get_title()


def test_plot_similarity_vs_distance_draws_labelled_curves():
    k = np.arange(5)
    fig = viz.plot_similarity_vs_distance(k, {"sin": np.cos(k), "learned": np.ones(5)})
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["sin", "learned"]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), np.cos(k))
    with pytest.raises(ValueError, match="one value per distance"):
        viz.plot_similarity_vs_distance(k, [1.0, 2.0])


def test_plot_loss_curves_aligns_curves_of_different_lengths():
    fig = viz.plot_loss_curves({"train": [4.0, 3.0, 2.5, 2.0], "valid": [3.1, 2.2]}, title="run")
    ax = fig.axes[0]
    train, valid = ax.get_lines()
    assert train.get_label() == "train" and valid.get_label() == "valid"
    assert train.get_xdata()[-1] == valid.get_xdata()[-1] == 4
    np.testing.assert_allclose(valid.get_ydata(), [3.1, 2.2])
    assert ax.get_title() == "run" and ax.get_ylabel() == "loss"


def test_plot_loss_curves_rejects_bad_history():
    with pytest.raises(TypeError, match="history must be a non-empty dict"):
        viz.plot_loss_curves([1.0, 2.0])
    with pytest.raises(ValueError, match=r"history\['train'\]"):
        viz.plot_loss_curves({"train": []})


def test_plot_lr_schedule_marks_warmup():
    lrs = [min((s + 1) / 4, (4 / (s + 1)) ** 0.5) for s in range(10)]
    fig = viz.plot_lr_schedule(lrs, warmup_steps=4)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), lrs)
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "learning rate"
    assert any("warmup" in line.get_label() for line in ax.get_lines())


def test_draw_architecture_draws_the_live_model_with_its_sizes():
    from tformer.nn.transformer import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(50, 60, d_model=32, num_heads=4, num_encoder_layers=3,
                                          num_decoder_layers=2, dim_feedforward=64))
    fig = viz.draw_architecture(model)
    text = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "Multi-Head Attention" in text and "Feed Forward" in text
    assert "3" in text and "2" in text  # the stack counts of this model, not the paper's 6

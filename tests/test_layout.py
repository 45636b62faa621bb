"""The package's layout: layered imports, no import hidden in a function to dodge a cycle."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "import_graph", Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"
)
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)


def test_import_graph_has_at_most_seven_layers_and_no_cycle():
    edges, _ = import_graph.graph()
    depth = import_graph.layers(edges)  # raises on a cycle
    assert max(depth.values()) <= 7, sorted(depth.items(), key=lambda kv: -kv[1])[:5]
    assert depth["tformer.masks"] == 2 and depth["tformer._checks"] == 1  # masks sit at the bottom


def test_no_tformer_import_inside_a_function():
    _, hidden = import_graph.graph()
    assert hidden == []


def test_checkpoint_module_knows_no_model_class_and_no_tokenizer():
    edges, _ = import_graph.graph()
    assert edges["tformer.training.checkpoint"] <= {"tformer.runtime", "tformer.training.loop"}
    tree = ast.parse((Path(import_graph.PACKAGE) / "training" / "checkpoint.py").read_text(encoding="utf-8"))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & {"Transformer", "TransformerConfig", "Vocab", "BPETokenizer", "TOKENIZER_KINDS"}

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
    package = "tformer.training.checkpoint"
    parts = {m for m in edges if m == package or m.startswith(package + ".")}
    assert len(parts) == 4  # the package and its three parts: files, directory, resume
    outside = set().union(*(edges[m] for m in parts)) - parts
    assert outside <= {"tformer.runtime", "tformer.training.loop"}
    names: set[str] = set()
    for path in (Path(import_graph.PACKAGE) / "training" / "checkpoint").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert "CheckpointLocked" in names  # the files were read
    assert not names & {"Transformer", "TransformerConfig", "Vocab", "BPETokenizer", "TOKENIZER_KINDS"}

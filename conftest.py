"""pytest set-up shared by the package tests (tests/) and the notebooks (nbval over notebooks/).

With several workers (``make test``: pytest-xdist, ``--dist loadfile``) each worker takes a whole
file at a time in collection order, so the longest files go first: the workers then finish
together instead of one waiting while the other runs a long file that came last. The order is
only a schedule; every test runs either way.
"""

from __future__ import annotations

import os

# seconds on a quiet 2-core machine (estimated from `--durations` and book/execution.md), longest
# first; a file missing here runs after these, in the usual order
LONGEST_FIRST = [
    "notebooks/08_training.ipynb",  # ~130
    "tests/test_zip.py",  # ~100: installs the course zip into a fresh venv
    "notebooks/10_gpt.ipynb",  # ~100
    "tests/test_pretrained.py",  # ~70: loads SmolLM2 in tformer and in transformers
    "notebooks/11b_small_llm.ipynb",  # ~55
    "notebooks/11c_finetuning.ipynb",  # ~30 with _build/finetune/results.json (~4 min without: a tiny run)
    "notebooks/09_inference.ipynb",  # ~55
    "notebooks/01_why_not_rnn.ipynb",  # ~45
    "tests/test_translations.py",  # ~40
    "notebooks/12_scaling_up.ipynb",  # ~30
    "tests/test_bench.py",  # ~25
    "notebooks/04_multi_head_attention.ipynb",  # ~25
    "tests/test_cli.py",  # ~20
]


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process: the usual order
        return
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: files keep their order

"""Shared test set-up."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors in these tests are tiny: a second thread only adds synchronisation and makes
    the tests sensitive to whatever else runs on the cores, so every test module uses one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

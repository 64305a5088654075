"""Shared settings of the ntk tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    # These tests run many small ops on machines whose few cores are shared with other jobs;
    # intra-op threads then mostly wait on each other (measured 5-15x slower than one thread).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

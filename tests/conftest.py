"""Fixtures shared by the test folders."""

import pytest
import torch


@pytest.fixture
def single_thread():
    """One intra-op thread for the test, the previous count restored afterwards.

    Many small ops on machines whose few cores are shared with other jobs: intra-op threads
    then mostly wait on each other (measured 5-15x slower than one thread). The folders of such
    tests request it for every test from their conftest; the multi-threaded C++ paths are
    exercised by tests/ops/test_threads.py and the benchmarks.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

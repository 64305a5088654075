"""Every solvers test runs on one thread (the fixture of tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    pass

"""A package installed without its C++ extension says so once, at import."""

import os
import subprocess
import sys

import pytest

# Import fastkernels with the extension made unimportable, as after an isolated build.
_PROGRAM = """
import sys, warnings
sys.modules["fastkernels._C"] = None
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastkernels.ops
    import fastkernels.learners
print(fastkernels.ops.HAS_CPP)
for w in caught:
    print(type(w.message).__name__, "|", w.message)
"""


def _run(**env) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROGRAM],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=True,
    )
    return proc.stdout.splitlines()


def test_missing_extension_warns_once_with_the_install_command():
    lines = _run(FASTKERNELS_NO_EXT="0")
    assert lines[0] == "False"
    warned = [line for line in lines[1:] if line.startswith("ExtensionWarning")]
    assert len(warned) == 1
    assert "pip install --no-build-isolation -e ." in warned[0]


@pytest.mark.parametrize("value", ["1", "yes"])
def test_opting_out_of_the_extension_silences_it(value):
    lines = _run(FASTKERNELS_NO_EXT=value)
    assert lines[0] == "False"
    assert not [line for line in lines[1:] if line.startswith("ExtensionWarning")]

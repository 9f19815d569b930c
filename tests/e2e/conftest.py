"""E2E fixtures: a build directory for the load generators. The cases run one at a time, in file
order (seizure, fever, amplification), each with the machine to itself: the seizure and fever
cases watch the whole host, and the amplification cases' timing has a margin to keep."""
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import tmpdir  # noqa: E402


@pytest.fixture(scope="session")
def build():
    path = tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)

"""E2E fixtures: a build directory for the load generators, and the amplification cases run in
the background while the fever cases run (their loads do not disturb each other's signals; the
seizure cases, which watch every CPU, run first and alone)."""
import concurrent.futures
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import amplification  # noqa: E402
from harness import tmpdir  # noqa: E402


@pytest.fixture(scope="session")
def build():
    path = tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def amplification_runs():
    """Every amplification case, started together on first use; {name: Future[CaseResult]}."""
    cases = {**amplification.FAULTS, **amplification.CONTROLS}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(cases))
    futures = {name: pool.submit(case) for name, case in cases.items()}
    yield futures
    pool.shutdown(wait=True)     # each case kills its own processes, even when it fails

"""Session set-up of the core benchmarks: builds the C-API loops (_capi_bench.pyx) once, in a
temp dir removed at the end, so every benchmark can import `_capi_bench`.
"""
import shutil
import tempfile

import pytest

from _build import BuildError, build_capi_bench

_TMPDIR = None


def pytest_sessionstart(session):
    global _TMPDIR
    _TMPDIR = tempfile.mkdtemp(prefix="coherence-capi-bench-")
    try:
        build_capi_bench(_TMPDIR)
    except BuildError as err:
        shutil.rmtree(_TMPDIR, ignore_errors=True)
        pytest.exit(str(err), returncode=pytest.ExitCode.INTERNAL_ERROR)


def pytest_sessionfinish(session, exitstatus):
    # The extension stays loaded; only its files go.
    if _TMPDIR:
        shutil.rmtree(_TMPDIR, ignore_errors=True)

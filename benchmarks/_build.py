"""Compile benchmarks/_capi_bench.pyx against the *installed* coherence's .pxd, in a temp dir.

Shared by conftest.py (pytest) and run_core.py; nothing is written into the repository.
"""
import importlib
import os
import shutil
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout

HERE = os.path.dirname(os.path.abspath(__file__))
PYX = os.path.join(HERE, "_capi_bench.pyx")
# Same optimisation as setup.py builds the core with, so the C loops are compiled alike.
COMPILE_ARGS = ["-O3"]


class BuildError(RuntimeError):
    pass


@contextmanager
def _output_to(log):
    """Send Python's and the C compiler's (a subprocess: file descriptors) output to log."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        with redirect_stdout(log), redirect_stderr(log):
            yield
    finally:
        log.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def build_capi_bench(tmpdir):
    """Build in tmpdir, import and return _capi_bench; BuildError with the compiler's output."""
    import coherence

    src = shutil.copy(PYX, tmpdir)   # cythonize writes the .c beside the .pyx: keep it out of the repo
    log_path = os.path.join(tmpdir, "build.log")
    try:
        with open(log_path, "w") as log, _output_to(log):
            from Cython.Build import cythonize
            from setuptools import Distribution, Extension
            ext = Extension("_capi_bench", [src], extra_compile_args=COMPILE_ARGS,
                            include_dirs=[coherence.get_include()])
            dist = Distribution({"ext_modules": cythonize(
                [ext], include_path=[coherence.get_include()], quiet=True,
                compiler_directives={"language_level": 3})})
            cmd = dist.get_command_obj("build_ext")
            cmd.build_lib = cmd.build_temp = tmpdir
            dist.run_command("build_ext")
    except (Exception, SystemExit) as err:   # distutils reports some failures as SystemExit
        with open(log_path) as log:
            output = log.read()
        raise BuildError(
            f"cannot build benchmarks/_capi_bench.pyx against coherence at {coherence.get_include()} "
            f"(needs Cython, setuptools and a C compiler): {err}\n{output}") from err
    sys.path.insert(0, tmpdir)
    importlib.invalidate_caches()
    return importlib.import_module("_capi_bench")

"""Shared fixtures: the C-API check module, compiled once per session against the installed package."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

import coherence

HERE = os.path.dirname(os.path.abspath(__file__))


def build_cython_module(pyx_path: str, build_dir: str):
    """Compile one .pyx with the installed coherence's .pxd files on the include path and import it."""
    name = os.path.splitext(os.path.basename(pyx_path))[0]
    setup_py = os.path.join(build_dir, "setup.py")
    with open(setup_py, "w") as f:
        f.write(textwrap.dedent(f"""
            from setuptools import setup, Extension
            from Cython.Build import cythonize
            setup(ext_modules=cythonize(
                [Extension({name!r}, [{pyx_path!r}], extra_compile_args=["-O2"],
                           include_dirs=[{coherence.get_include()!r}])],
                include_path=[{coherence.get_include()!r}],
                build_dir={build_dir!r}, quiet=True))
        """))
    # Under tools/sanitize.sh the interpreter preloads a sanitizer's runtime: the compiler and
    # the build's Python need not (CFLAGS still instruments what they build).
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.run(
        [sys.executable, setup_py, "build_ext", "--build-lib", build_dir, "--build-temp", build_dir],
        cwd=build_dir, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        pytest.fail(f"building {name} against coherence's .pxd failed:\n{proc.stdout}\n{proc.stderr}")
    for entry in os.listdir(build_dir):
        if entry.startswith(name + ".") and entry.endswith((".so", ".pyd")):
            spec = importlib.util.spec_from_file_location(name, os.path.join(build_dir, entry))
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    pytest.fail(f"building {name} produced no extension module in {build_dir}")


@pytest.fixture(scope="session")
def capi(tmp_path_factory):
    return build_cython_module(os.path.join(HERE, "capi", "capi_check.pyx"),
                               str(tmp_path_factory.mktemp("capi")))

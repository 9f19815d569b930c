"""Build of coherence's compiled core (csrc/ -> coherence._core).

-O3 by default, never -march=native (the wheel must run on any x86-64/arm64 of its family).
COHERENCE_DEBUG=1 builds with -O0 -g and Cython's bounds checks, for gdb; COHERENCE_SANITIZE=thread
builds for ThreadSanitizer (tools/sanitize.sh).
"""
import os
import shutil

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

DEBUG = os.environ.get("COHERENCE_DEBUG", "") not in ("", "0")
# COHERENCE_SANITIZE=thread (or address,undefined) instruments the build with those sanitizers;
# the interpreter must preload the runtime (tools/sanitize.sh does it).
SANITIZE = os.environ.get("COHERENCE_SANITIZE", "")
CSRC = os.path.join("csrc", "coherence")

link_args = []
if DEBUG:
    compile_args = ["-O0", "-g3", "-UNDEBUG"]
    directives = {"boundscheck": True, "wraparound": True, "initializedcheck": True}
else:
    compile_args = ["-O3"]
    directives = {}
if SANITIZE:
    compile_args = compile_args[:1] if DEBUG else ["-O1"]
    compile_args += ["-g", "-fno-omit-frame-pointer", f"-fsanitize={SANITIZE}"]
    link_args = [f"-fsanitize={SANITIZE}"]

extensions = [
    Extension(f"coherence.{name}", sources=[os.path.join(CSRC, f"{name}.pyx")],
              include_dirs=["csrc"],    # "coherence/coh_atomic.h", as users include it
              extra_compile_args=compile_args, extra_link_args=link_args)
    for name in ("_core", "_sampler")
]


class build_py_with_pxd(build_py):
    """Ship the .pxd files and the C header beside the extension, so that other Cython code
    can cimport them."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "coherence")
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir(CSRC)):
            if name.endswith((".pxd", ".h")):
                shutil.copy2(os.path.join(CSRC, name), os.path.join(target, name))


setup(
    ext_modules=cythonize(
        extensions,
        include_path=["csrc"],
        compiler_directives={"language_level": 3, **directives},
        gdb_debug=DEBUG,
    ),
    cmdclass={"build_py": build_py_with_pxd},
)

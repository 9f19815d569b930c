"""The hand-written stubs: they match the compiled modules (stubtest), and the test suite
type-checks against them (mypy), as a user's code would."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(*args):
    # From a neutral directory: the installed package, not the source tree, is checked.
    return subprocess.run([sys.executable, "-m", *args], cwd=HERE,
                          capture_output=True, text=True)


def test_stubs_match_the_compiled_modules():
    proc = run("mypy.stubtest", "coherence._core", "coherence._sampler", "--allowlist",
               os.path.join(HERE, "stubtest_allowlist.txt"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_tests_type_check_against_the_stubs():
    files = sorted(os.path.join(HERE, f) for f in os.listdir(HERE) if f.endswith(".py"))
    proc = run("mypy", "--config-file", os.path.join(os.path.dirname(HERE), "pyproject.toml"),
               "--cache-dir", os.devnull, *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_package_type_checks():
    # the installed package, as users import it (stubs for the compiled modules included)
    proc = run("mypy", "--config-file", os.path.join(os.path.dirname(HERE), "pyproject.toml"),
               "--cache-dir", os.devnull, "-p", "coherence")
    assert proc.returncode == 0, proc.stdout + proc.stderr

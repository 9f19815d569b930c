"""The tests again against builds instrumented by sanitizers (tools/sanitize.sh): the concurrency
tests under ThreadSanitizer (every word one thread writes while another reads must be an atomic
access, or TSan reports a data race and this fails), and the whole suite under AddressSanitizer
and UndefinedBehaviorSanitizer (any report fails the run)."""
import os
import subprocess
import sys

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def test_the_concurrency_tests_pass_under_threadsanitizer():
    proc = subprocess.run(
        ["bash", os.path.join(TOOLS, "sanitize.sh"), "thread"],     # its default: those, on every CPU
        env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert "ThreadSanitizer" not in out, out[-20000:]
    assert proc.returncode == 0, out[-20000:]
    assert " passed" in out and "failed" not in out, out[-5000:]


def test_the_suite_passes_under_address_and_undefined_behaviour_sanitizers():
    # the whole suite but e2e and fuzzing, against the debug build with -fsanitize=address,undefined
    proc = subprocess.run(["bash", os.path.join(TOOLS, "sanitize.sh"), "address"],
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True,
                          timeout=1800)
    out = proc.stdout + proc.stderr
    assert "Sanitizer" not in out and "runtime error" not in out, out[-20000:]
    assert proc.returncode == 0, out[-20000:]
    assert " passed" in out and "failed" not in out, out[-5000:]


def test_address_sanitizer_reports_reading_past_a_python_bytes_object():
    # The run above proves something only if a bad read fails it: a bytes object read one byte
    # past its end through libc's memmove (which ASan intercepts) must stop the interpreter with
    # a report, even for a small object (PYTHONMALLOC=malloc: no pymalloc arena around it).
    reader = ("import ctypes; data = b'0123456789'; out = ctypes.create_string_buffer(64); "
              "ctypes.memmove(out, ctypes.c_char_p(data), len(data) + 40); print('not caught')")
    proc = subprocess.run(["bash", os.path.join(TOOLS, "sanitize.sh"), "address", "--",
                           sys.executable, "-c", reader],
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "not caught" not in out, out[-5000:]
    assert "AddressSanitizer: heap-buffer-overflow" in out, out[-5000:]

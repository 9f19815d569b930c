"""The concurrency tests again, against a build instrumented by ThreadSanitizer
(tools/sanitize.sh): every word one thread writes while another reads must be an atomic access,
or TSan reports a data race and this fails."""
import os
import subprocess
import sys

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def test_the_concurrency_tests_pass_under_threadsanitizer():
    proc = subprocess.run(
        ["bash", os.path.join(TOOLS, "sanitize.sh"), "thread",
         "tests/test_core_concurrency.py", "tests/test_hooks.py"],
        env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert "ThreadSanitizer" not in out, out[-20000:]
    assert proc.returncode == 0, out[-20000:]
    assert " passed" in out and "failed" not in out, out[-5000:]

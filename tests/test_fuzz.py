"""The fuzz harnesses of fuzz/ (atheris): each holds on every input of its committed seed corpus
(the crashes found so far among them), and each runs coverage-guided for a bounded time
(tools/fuzz.sh) without finding an input that breaks what it checks."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESSES = ("statsd", "procfs", "config", "jvm", "scrape")
# Seconds of fuzzing per harness in CI, all harnesses at once (procfs also builds the instrumented
# parser first, ~15 s). tools/fuzz.sh HARNESS -max_total_time=N runs one longer, alone.
FUZZ_SECONDS = 12


def corpus(harness):
    folder = os.path.join(ROOT, "fuzz", "corpus", harness)
    return sorted(os.path.join(folder, name) for name in os.listdir(folder))


@pytest.mark.parametrize("harness", HARNESSES)
def test_every_seed_passes_the_harness(harness, tmp_path):
    seeds = corpus(harness)
    assert len(seeds) >= 3
    # files given to a libFuzzer binary are each run once, not fuzzed
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "fuzz", f"fuzz_{harness}.py"), *seeds],
                          cwd=ROOT, env=dict(os.environ, TMPDIR=str(tmp_path)),
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert out.count("Executed ") == len(seeds), out[-5000:]


@pytest.fixture(scope="module")
def fuzzing(tmp_path_factory):
    """Every harness fuzzing at once (tools/fuzz.sh, FUZZ_SECONDS each, wall time): on a 2-CPU
    machine a minute less than one after another, each at a share of a CPU. Per harness: its
    process, its output file and its artifacts folder; the tests wait for their own."""
    runs = {}
    for harness in HARNESSES:
        folder = tmp_path_factory.mktemp(f"fuzz-{harness}")
        out = open(folder / "out", "w+")
        proc = subprocess.Popen(
            ["bash", os.path.join(ROOT, "tools", "fuzz.sh"), harness, f"-max_total_time={FUZZ_SECONDS}",
             "-timeout=10", "-print_final_stats=1"],
            cwd=ROOT, env=dict(os.environ, PYTHON=sys.executable, FUZZ_ARTIFACTS=str(folder / "artifacts")),
            stdout=out, stderr=subprocess.STDOUT, text=True)
        runs[harness] = (proc, out, folder / "artifacts")
    yield runs
    for proc, out, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()


@pytest.mark.parametrize("harness", HARNESSES)
def test_fuzzing_finds_nothing(harness, fuzzing):
    proc, log, artifacts = fuzzing[harness]
    proc.wait(timeout=600)
    log.seek(0)
    out = log.read()
    found = "".join(f"\n{p.name}: {p.read_bytes()!r}" for p in artifacts.iterdir()) if artifacts.exists() else ""
    # an input that breaks the harness, printed whole: add it to fuzz/corpus/<harness>/ and a
    # test beside the module's others, then fix it
    assert not found and proc.returncode == 0, f"{out[-6000:]}\ninputs that broke fuzz/fuzz_{harness}.py:{found}"
    assert "INITED" in out and "DONE" in out, out[-5000:]     # every seed ran, then fuzzing did
    runs = int(out.split("stat::number_of_executed_units:")[1].split()[0])
    assert runs > len(corpus(harness)), out[-3000:]

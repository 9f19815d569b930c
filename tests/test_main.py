"""`python -m coherence` shows the core working on the README's seizure example."""
import subprocess
import sys


def figures(out: str, label: str):
    line = next(line for line in out.splitlines() if line.startswith(label))
    mean, std = line[len(label):].split()
    return float(mean), float(std)


def test_demo_shows_same_mean_and_different_std():
    out = subprocess.run([sys.executable, "-m", "coherence"], capture_output=True, text=True,
                         check=True, cwd="/").stdout
    steady = figures(out, "steady 49-51 %")
    flipping = figures(out, "flipping 10 % <-> 90 %")
    assert steady[0] == flipping[0] == 50.0
    assert flipping[1] == 40.0 and steady[1] < 1.0


def test_demo_points_at_commands_that_exist():
    from coherence.cli import main
    out = subprocess.run([sys.executable, "-m", "coherence"], capture_output=True, text=True,
                         check=True, cwd="/").stdout
    for name in ("live", "simulate"):
        assert f"`coherence {name}`" in out and name in main.commands

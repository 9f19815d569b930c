"""Smoke test of benchmarks/run_sampler.py: its machinery (build the floor from
programs/floor.c, start each case from programs/, measure, stop, report; --profile) runs for a
fraction of a second per case, so CI keeps it working.

No timing is asserted: the figures of a 0.3 s run on a shared VM mean nothing. Run the runner
itself for the numbers: python benchmarks/run_sampler.py
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

import run_sampler as rs

HAVE_PERF = shutil.which("perf") is not None


@pytest.fixture(scope="module")
def result():
    return rs.run(duration=0.3, repeats=1, warmup=0.1)


@pytest.mark.parametrize("case", rs.CASES)
def test_each_case_measures_and_reports(result, case):
    (rep,) = result["runs"][case]
    assert "error" not in rep, rep.get("error")
    assert rep["ticks"] > 0 and rep["ticks_expected"] > 0 and rep["overruns"] >= 0
    assert rep["elapsed_s"] > 0 and rep["wall_s"] > 0
    assert rep["cpu_ns"] >= 0 and rep["cpu_pct"] >= 0
    assert sum(n for _, n in rep["lateness_hist"]) > 0
    fig = rs.figures(rep)
    assert fig["achieved_hz"] > 0 and fig["p99_us"] >= fig["p50_us"] >= 1
    if case == "floor":
        assert rep["timer_slack_ns"] == rs.TIMER_SLACK_NS   # compared with the sampler fairly
        assert rep["read_errors"] == 0 and rep["bytes_per_read"] > 0
    if case == "sampler":
        assert rep["sources"]["cpu"] is not None
        assert rep["sampler_stats"]["ticks"] == rep["ticks"]


def test_the_peer_keeps_the_samplers_schedule(result):
    """The peer reads memory and network as many ticks apart as the sampler reads its memory and
    request sources, both taken from coherence's Config; the naive row reads them every tick."""
    every = result["config"]["slow_every"]
    (sampler,) = result["runs"]["sampler"]
    (peer,) = result["runs"]["psutil"]
    (naive,) = result["runs"]["psutil-naive"]
    from coherence.config import SamplerConfig
    assert result["config"]["slow_hz"] == SamplerConfig().slow_hz
    assert every == round(sampler["hz"] / sampler["slow_hz_read"]) > 1
    assert peer["slow_every"] == every
    assert peer["slow_reads"] == len(range(1, peer["ticks"], every))
    assert naive["slow_every"] == 1 and naive["slow_reads"] == naive["ticks"]


def test_the_children_are_files_of_the_checkout():
    for path in (rs.FLOOR_SRC, rs.SAMPLER_CHILD, rs.PSUTIL_CHILD):
        assert os.path.isfile(path), path
        assert os.path.dirname(path) == rs.PROGRAMS
    if shutil.which("git"):
        # .gitignore drops benchmarks/*.c (Cython's output): the floor's source must not match it.
        # check-ignore: 0 ignored, 1 not ignored, 128 not a git checkout.
        ignored = subprocess.run(["git", "check-ignore", "-q", rs.FLOOR_SRC], cwd=rs.HERE,
                                 capture_output=True, check=False)
        assert ignored.returncode != 0, "programs/floor.c is ignored by git"


def test_report_has_every_row_and_target(result):
    text = rs.report_text(result)
    assert text.startswith("Machine: ")
    for label in rs.LABELS.values():
        assert f"| {label} |" in text
    verdicts = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(verdicts) == 5                       # issue 3's four, and issue 10's runtime one
    assert any(rs.PEER in line for line in verdicts)
    assert all(line.split(":")[0][2:] in ("PASS", "MISS", "SKIP") for line in verdicts)
    json.dumps(result, default=str)          # what --json writes


def test_child_is_killed_when_it_never_gets_ready():
    child = rs.Child([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(rs.CaseError, match="no 'ready'"):
        with child:
            child.wait_ready(timeout=0.3)
    assert child.proc.poll() is not None


def test_child_that_dies_is_reported():
    with pytest.raises(rs.CaseError, match="exited"):
        with rs.Child([sys.executable, "-c", "import sys; sys.exit('boom')"]) as child:
            child.wait_ready(timeout=10)


def test_main_writes_json_and_exits_0(tmp_path, capsys):
    out = tmp_path / "raw.json"
    assert rs.main(["--duration", "0.1", "--warmup", "0.05", "--repeats", "1",
                    "--cases", "sampler", "--json", str(out)]) == 0
    raw = json.loads(out.read_text())
    assert raw["config"]["cases"] == ["sampler"] and len(raw["runs"]["sampler"]) == 1
    assert "| coherence sampler |" in capsys.readouterr().out


def test_profile_sorts_perf_samples():
    # perf comes from Debian's linux-perf, which tools/test-deps.sh installs where missing
    assert HAVE_PERF, "no perf: run tools/test-deps.sh (README's test command does)"
    prof = rs.profile(duration=0.3, warmup=0.1)
    errors = [r["error"] for r in prof["cases"].values() if "error" in r]
    assert not errors, errors
    for case in rs.PROFILE_CASES:
        r = prof["cases"][case]
        assert sum(r["samples"].values()) > 0 and r["cpu_ns"] > 0
        assert set(r["samples"]) <= set(rs.PROFILE_ORDER)
    text = rs.profile_text(prof)
    assert "| total |" in text and "perf record -e cpu-clock" in text


def test_classify_by_call_chain_then_by_object():
    sleep = [("hrtimer_nanosleep+0x9", "[kernel.kallsyms]"), ("clock_nanosleep@GLIBC", "libc.so.6")]
    pread = [("cgroup_base_stat_cputime_show+0x2", "[kernel.kallsyms]"),
             ("cpu_stat_show+0x1", "[kernel.kallsyms]"), ("cgroup_seqfile_show+0x4", "[kernel.kallsyms]"),
             ("ksys_pread64+0x5", "[kernel.kallsyms]"), ("__libc_pread64+0x3", "libc.so.6")]
    own = [("__pyx_f_tick+0x3", "_sampler.cpython-311-x86_64-linux-gnu.so")]
    assert rs.classify(sleep) == rs.CHAIN_BUCKETS[0][0]
    assert rs.classify(pread) == rs.CHAIN_BUCKETS[1][0]
    assert rs.pread_handler(pread) == "cpu_stat_show"
    assert rs.pread_handler(pread[3:]) == "read path"
    assert rs.classify(own) == rs.LEAF_BUCKETS[0][0]
    assert rs.classify([]) == rs.OTHER

"""Prometheus range queries through the README's node_exporter mapping: the same detectors judge
them; a seizure the 15 s scrapes cannot show is UNAVAILABLE with that reason, never OK; bad
input is one line."""
import json
import os
from typing import Any, Dict, List, Optional

import pytest

from coherence.cli import run as cli
from coherence.config import ConfigError
from coherence.monitor import Report
from coherence.promql import load
from coherence.recording import RecordingError
from coherence.replay import play, replay_config
from coherence.states import State

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = os.path.join(ROOT, "docs", "mappings", "node_exporter.toml")
RUNTIMES = os.path.join(ROOT, "docs", "mappings", "runtimes.toml")
STEP = 15.0
T0 = 1_795_000_000.0
MINUTES = 12
CHURN = (4 * 60, 8 * 60)          # seconds into the range: 2 GB/s of minor faults


def series(name: str, labels: Dict[str, str], values: List[float]) -> Dict[str, Any]:
    return {"metric": {"__name__": name, "instance": labels.pop("instance", "db1:9100"),
                       "job": "node", **labels},
            "values": [[T0 + i * STEP, repr(v)] for i, v in enumerate(values)]}


def node_matrix(instances: int = 1) -> Dict[str, Any]:
    n = int(MINUTES * 60 / STEP) + 1
    t = [i * STEP for i in range(n)]
    result = []
    for inst in range(instances):
        where = {"instance": f"db{inst + 1}:9100"}
        for cpu in ("0", "1"):
            for mode, per_s in (("user", 0.3), ("system", 0.1), ("idle", 0.6)):
                result.append(series("node_cpu_seconds_total", {**where, "cpu": cpu, "mode": mode},
                                     [1000 + per_s * x for x in t]))
        faults, f = [], 1e9
        for x in t:
            f += STEP * (2e9 / 4096 if CHURN[0] < x <= CHURN[1] else 5e6 / 4096)
            faults.append(float(int(f)))
        result += [series("node_vmstat_pgfault", dict(where), faults),
                   series("node_vmstat_pgmajfault", dict(where), [12345.0] * n),
                   series("node_memory_MemTotal_bytes", dict(where), [16e9] * n),
                   series("node_memory_MemAvailable_bytes", dict(where), [10e9] * n),
                   series("node_pressure_cpu_waiting_seconds_total", dict(where),
                          [50 + 0.02 * x for x in t]),
                   series("node_netstat_Tcp_PassiveOpens", dict(where), [100 + 0.5 * x for x in t]),
                   series("node_netstat_Tcp_ActiveOpens", dict(where), [200 + 0.5 * x for x in t])]
    return {"status": "success", "data": {"resultType": "matrix", "result": result}}


def write(tmp_path, doc: Any, name: str = "range.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def replayed(path: str, mapping: str = NODE, **overrides: float) -> List[Report]:
    header, records = load(path, mapping)
    reports: List[Report] = []
    config = replay_config(header, None, overrides)
    result = play(header, records, config, on_report=reports.append)
    assert result.error is None
    return reports


def state_at(reports: List[Report], t: float, detector: str) -> State:
    return min(reports, key=lambda r: abs(r.elapsed_s - t)).verdict.states[detector]


def test_node_exporter_data_judge_fever_and_say_why_seizure_cannot(tmp_path):
    reports = replayed(write(tmp_path, node_matrix()))
    assert reports[-1].elapsed_s == pytest.approx(MINUTES * 60, abs=0.3)
    seizure = {r.verdict.states["seizure"] for r in reports}
    assert seizure == {State.UNAVAILABLE}
    reason = reports[-1].findings["seizure"].reason
    assert "every 15 s" in reason and "100 ms" in reason
    # fever: judged OK before the churn, CRITICAL within it (2 GB/s >> 512 MB/s, memory flat)
    assert state_at(reports, CHURN[0] - 30, "fever") == State.OK
    assert state_at(reports, CHURN[0] + 60, "fever") == State.CRITICAL
    f = min(reports, key=lambda r: abs(r.elapsed_s - CHURN[0] - 60)).findings["fever"]
    assert f.value == pytest.approx(2000, rel=0.01)            # MB/s of churn
    assert state_at(reports, CHURN[1] + 60, "fever") == State.OK
    # the TCP proxy: a ratio of 1 is judged, and is no storm
    assert state_at(reports, 300, "amplification") == State.OK
    assert reports[-1].snapshot.requests.ratio == pytest.approx(1.0, abs=0.01)


def test_a_coarser_resolution_asked_for_is_judged(tmp_path):
    coarse = {"seizure.resolution_s": 15.0, "seizure.window_s": 300.0}
    reports = replayed(write(tmp_path, node_matrix()), NODE, **coarse)
    assert reports[-1].verdict.states["seizure"] == State.OK      # a steady 40 %
    assert reports[-1].snapshot.cpu.util_mean_pct == pytest.approx(40.0, abs=0.01)


def test_runtime_counters_become_runtime_tracks(tmp_path):
    n = 40
    t = [i * STEP for i in range(n)]
    doc = {"status": "success", "data": {"resultType": "matrix", "result": [
        series("jvm_gc_pause_seconds_sum", {"job": "orders", "instance": "o:8080"},
               [0.6 * x for x in t]),
        series("jvm_gc_pause_seconds_count", {"job": "orders", "instance": "o:8080"},
               [20.0 * x for x in t]),
        series("jvm_gc_memory_allocated_bytes_total", {"job": "orders", "instance": "o:8080"},
               [3e9 * x for x in t]),
    ]}}
    reports = replayed(write(tmp_path, doc), mapping=RUNTIMES)
    last = reports[-1]
    (orders,) = last.snapshot.runtime
    assert (orders.name, orders.runtime) == ("orders", "jvm")
    assert orders.gc_share == pytest.approx(0.6, rel=0.01)
    assert last.verdict.states["fever"] == State.CRITICAL       # 60 % of the time in GC
    assert last.verdict.states["seizure"] == State.UNAVAILABLE
    assert last.findings["seizure"].reason == "the Prometheus data have no CPU series"


def test_several_instances_are_refused(tmp_path):
    with pytest.raises(RecordingError, match="2 instances"):
        load(write(tmp_path, node_matrix(instances=2)), NODE)


@pytest.mark.parametrize("doc, says", [
    ({"status": "error", "error": "bad_data: parse error"}, "the query failed: bad_data"),
    ({"status": "success", "data": {"resultType": "vector", "result": []}}, "needs a matrix"),
    ({"status": "success", "data": {"resultType": "matrix", "result": [{"values": []}]}},
     "malformed matrix"),
    ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "no series matches"),
    ([1, 2, 3], "not a Prometheus API answer"),
])
def test_bad_prometheus_answers_are_one_line(tmp_path, capsys, doc, says):
    path = write(tmp_path, doc)
    assert cli(["replay", path, "--mapping", NODE]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("mapping, says", [
    ("[signals]\nnonsense = ['x']\n", "unknown signal 'nonsense'"),
    ("[signals]\nminor_faults_total = 'x{'\n", "signals.minor_faults_total"),
    ("[signals]\nminor_faults_total = [1]\n", "a list of selectors"),
    ("ncpu = -1\n[signals]\nmem_total_bytes = ['a']\n", "ncpu must be a positive number"),
    ("", "maps no series"),
    ("[runtime.x]\nwhatever_total = ['a']\n", "unknown counter 'whatever_total'"),
    ("not toml [", "not valid TOML"),
])
def test_bad_mappings_are_one_line(tmp_path, capsys, mapping, says):
    path = write(tmp_path, node_matrix())
    (tmp_path / "m.toml").write_text(mapping)
    assert cli(["replay", path, "--mapping", str(tmp_path / "m.toml")]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def test_a_mapping_error_is_a_config_error(tmp_path):
    (tmp_path / "m.toml").write_text("[signals]\nnope = ['a']\n")
    with pytest.raises(ConfigError):
        load(write(tmp_path, node_matrix()), str(tmp_path / "m.toml"))


def ncpu_of(tmp_path: Any, mapping: Optional[str] = None) -> float:
    header, _ = load(write(tmp_path, node_matrix()), mapping or NODE)
    return header.ncpu


def test_cpus_are_counted_from_the_cpu_labels(tmp_path):
    assert ncpu_of(tmp_path) == 2.0

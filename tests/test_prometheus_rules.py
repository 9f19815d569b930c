"""deploy/prometheus: the rules pass `promtool check rules` and their unit tests (`promtool test
rules`, input series and expected alerts, in deploy/prometheus/tests/); they use only series
the exporter serves; each detector's alerts carry the recommendation coherence makes in that
state; the example Prometheus and Alertmanager configurations are valid and route as they say."""
import glob
import os
import re
import shutil
import subprocess
from typing import Any, Dict, List

import pytest
import yaml

from coherence.detectors import DETECTORS, Amplification, Fever, Seizure
from coherence.verdict import CRITICAL_VETO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy", "prometheus")
RULES = os.path.join(DEPLOY, "coherence.rules.yml")
# The Grafana dashboard (issue 11) reads this recording rule by name: renaming it breaks its fleet view.
FLEET_SHARE = "job_detector_state:coherence_detector_state:avg"
ALERT_OF = {Seizure.name: "CoherenceSeizure", Fever.name: "CoherenceFever",
            Amplification.name: "CoherenceAmplification"}


def tool(name: str) -> str:
    # promtool comes with Debian's prometheus package, amtool with prometheus-alertmanager;
    # tools/test-deps.sh installs both (the README's test command runs it)
    path = shutil.which(name)
    assert path, f"no {name}: run tools/test-deps.sh (the README's test command does)"
    return path


def run(*cmd: str, cwd: str = DEPLOY) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rules() -> List[Dict[str, Any]]:
    with open(RULES) as f:
        return [rule for group in yaml.safe_load(f)["groups"] for rule in group["rules"]]


def alerts(rules: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [r for r in rules if "alert" in r]


def test_promtool_checks_the_rules():
    proc = run(tool("promtool"), "check", "rules", "--lint=all", "--lint-fatal", RULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass():
    files = sorted(glob.glob(os.path.join(DEPLOY, "tests", "*.yml")))
    assert len(files) >= 3, files
    proc = run(tool("promtool"), "test", "rules", *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(files), proc.stdout


def test_every_alert_is_seen_firing_by_a_unit_test(rules):
    """A new alert comes with its unit test: each alert name is expected to fire, with its
    labels and annotations, in deploy/prometheus/tests/."""
    fired = set()
    for path in glob.glob(os.path.join(DEPLOY, "tests", "*.yml")):
        with open(path) as f:
            for test in yaml.safe_load(f)["tests"]:
                for case in test.get("alert_rule_test", ()):
                    for alert in case.get("exp_alerts") or ():
                        assert alert.get("exp_annotations"), (path, case)
                        fired.add((alert["exp_labels"]["alertname"], alert["exp_labels"].get("severity")))
    assert {(a["alert"], a["labels"]["severity"]) for a in alerts(rules)} <= fired


def test_each_detector_has_a_critical_and_a_warning_alert_with_its_recommendation(rules):
    """labels detector, severity, veto: the veto is what coherence recommends in that state
    (coherence_detector_veto), so a route on `veto` agrees with the sentinel."""
    for cls in (Seizure, Fever, Amplification):
        mine = [a for a in alerts(rules) if a["alert"] == ALERT_OF[cls.name]]
        by_severity = {a["labels"]["severity"]: a for a in mine}
        assert sorted(by_severity) == ["critical", "warning"] and len(mine) == 2, mine
        for severity, state, veto in (("critical", "CRITICAL", CRITICAL_VETO.get(cls.name, cls.veto)),
                                      ("warning", "WARNING", cls.veto)):
            rule = by_severity[severity]
            assert rule["labels"]["veto"] == str(veto), rule
            assert f'detector="{cls.name}", state="{state}"' in rule["expr"], rule
    assert set(ALERT_OF) == set(DETECTORS)


def test_fleet_share_is_recorded_under_the_name_the_dashboard_reads(rules):
    recorded = {r["record"]: r["expr"].strip() for r in rules if "record" in r}
    assert recorded[FLEET_SHARE] == "avg by (job, detector, state) (coherence_detector_state)"


def test_the_rules_use_only_series_the_exporter_serves(rules):
    """Every name in an expression or an annotation's query is in docs/metrics.md (which
    tests/test_sinks_prometheus.py holds to what is served), a rule recorded here, or `up`."""
    with open(os.path.join(ROOT, "docs", "metrics.md")) as f:
        served = set(re.findall(r"^\| `(coherence_[a-z0-9_]+)`", f.read(), re.M))
    recorded = {r["record"] for r in rules if "record" in r}
    with open(RULES) as f:
        text = "\n".join(line.split("#")[0] if line.lstrip().startswith("#") else line
                         for line in f)
    used = set(re.findall(r"\b(coherence_[a-z0-9_]+|[a-z_]+:[a-z0-9_]+:[a-z0-9_]+)\b", text))
    used -= {"coherence_seizure_"}          # "coherence_seizure_*" in words, not a query
    assert used - served - recorded == set()
    assert "up{" in text and FLEET_SHARE in recorded


def test_the_example_prometheus_configuration_is_valid(tmp_path):
    """prometheus.example.yml, its Kubernetes job with a static target in place of its
    discovery: Debian's Prometheus is built without Kubernetes discovery, and its relabelling
    is still checked. --syntax-only: its TLS and password files are placeholders."""
    with open(os.path.join(DEPLOY, "prometheus.example.yml")) as f:
        config = yaml.safe_load(f)
    assert config["rule_files"] == ["coherence.rules.yml"]
    jobs = config["scrape_configs"]
    assert all(j["job_name"].startswith("coherence") for j in jobs), jobs   # the rules' job=~"coherence.*"
    kubernetes = [j for j in jobs if j.pop("kubernetes_sd_configs", None) is not None]
    assert len(kubernetes) == 1
    kubernetes[0]["static_configs"] = [{"targets": ["10.0.0.1:21950"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    proc = run(tool("promtool"), "check", "config", "--syntax-only", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_example_alertmanager_configuration_pages_critical_and_tickets_warning(rules):
    config = os.path.join(DEPLOY, "alertmanager.example.yml")
    amtool = tool("amtool")
    proc = run(amtool, "check-config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for alert in alerts(rules):
        labels = {"alertname": alert["alert"], **alert["labels"]}
        if "{{" in labels.get("veto", ""):
            labels["veto"] = "SHED_LOAD"                       # templated: one of the vetoes
        want = {"critical": "pager", "warning": "tickets"}[labels["severity"]]
        proc = run(amtool, "config", "routes", "test", f"--config.file={config}",
                   f"--verify.receivers={want}", *(f"{k}={v}" for k, v in sorted(labels.items())))
        assert proc.returncode == 0, (labels, proc.stdout + proc.stderr)

"""The deployment files in deploy/, checked as far as this machine allows:

- the systemd unit: `systemd-analyze verify` and `security --offline`, its keys read with a
  parser, and its sandbox held against what `coherence serve` really does (every system call,
  socket family and file access, traced with strace);
- the capabilities it and the DaemonSet keep, measured against real JVMs of another user, in
  the shared /tmp and in a "container" (its own mount and pid namespaces): each one is needed,
  and together they are enough;
- the container image file: its stages, user and command, the sources of its COPY lines, and
  the wheel those sources (less .dockerignore) build (no container engine runs here);
- the Kubernetes manifest: the API schemas (kubernetes-validate, strict), the pod's
  privileges, mounts, probes, annotations and settings;
- the Grafana dashboard: every PromQL expression names only series a real exporter serves or the
  fleet recording rule records, and returns data when Prometheus's engine (promtool) evaluates
  it over those series.

Needs root (users, namespaces, capability sets), as CI and tools/test-deps.sh have.
"""
import gzip
import http.server
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from base64 import b64encode
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Set, Tuple

import bcrypt
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from coherence.cli import EXIT_USAGE, main
from coherence.config import Config, load, parse_listen
from coherence.sinks.prometheus import PrometheusSink, Series
from test_sinks_jsonl import scripted_reports
from test_sinks_prometheus import runtime_reports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
UNIT = os.path.join(DEPLOY, "systemd", "coherence.service")
SETTINGS = os.path.join(DEPLOY, "systemd", "coherence.toml")
SYSUSERS = os.path.join(DEPLOY, "systemd", "coherence.sysusers")
CONTAINERFILE = os.path.join(DEPLOY, "container", "Containerfile")
DOCKERIGNORE = os.path.join(ROOT, ".dockerignore")
DAEMONSET = os.path.join(DEPLOY, "kubernetes", "daemonset.yaml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "coherence.json")
RULES = os.path.join(DEPLOY, "prometheus", "coherence.rules.yml")
COHERENCE = os.path.join(os.path.dirname(sys.executable), "coherence")   # the installed entry point
CHURN = os.path.join(ROOT, "tests", "fixtures", "jvm", "Churn.java")
SAFETY_S = 60.0            # a deadline only a hung process reaches (never a measured time)

# The fleet recording rule the dashboard is built on (issue 11, deploy/prometheus/coherence.rules.yml).
FLEET_RECORD = "job_detector_state:coherence_detector_state:avg"
FLEET_EXPR = "avg by (job, detector, state) (coherence_detector_state)"
# README, "Benchmarks" and "Running it on a fleet": `coherence serve` at --hz 1000 uses ~1.4 % of
# a core and ~48 MB resident; under a CFS quota of 250m it kept its ticks, under 50m it did not.
MEASURED_RSS_BYTES = 48e6
SAFE_CPU_LIMIT_MILLI = 250


def require(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"no {tool}: run tools/test-deps.sh as root (the README's test command does)"
    return path


def require_root() -> None:
    assert os.geteuid() == 0, ("these checks create a user, namespaces and capability sets: run "
                               "the tests as root, as CI does")


def serve_args(args: List[str]) -> Dict[str, Any]:
    """coherence's own parser over `serve ARGS...`: its options, or the usage error it raises."""
    assert args and args[0] == "serve", args
    with main.make_context("coherence", list(args), resilient_parsing=False) as ctx:
        command = main.get_command(ctx, args[0])
        assert command is not None
        with command.make_context(args[0], list(args[1:]), parent=ctx) as sub:
            return dict(sub.params)


def is_loopback(listen: str) -> bool:
    import ipaddress
    host, _ = parse_listen(listen)
    return ipaddress.ip_address(host).is_loopback


# ====================================================================== systemd
def unit_file(path: str) -> Dict[str, Dict[str, List[str]]]:
    """A systemd unit as {section: {key: [values, in order]}} (keys may repeat)."""
    sections: Dict[str, Dict[str, List[str]]] = {}
    current: Optional[str] = None
    pending = ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = (pending + line).strip(), ""
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                current = line[1:-1]
                sections.setdefault(current, {})
                continue
            key, eq, value = line.partition("=")
            assert eq and current is not None, f"{path}: not key=value in a section: {line!r}"
            sections[current].setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> Dict[str, Dict[str, List[str]]]:
    return unit_file(UNIT)


def one_value(section: Dict[str, List[str]], key: str) -> str:
    values = section.get(key)
    assert values and len(values) == 1, f"{key}: {values!r}"
    return values[0]


def unit_capabilities(unit: Dict[str, Dict[str, List[str]]]) -> FrozenSet[str]:
    service = unit["Service"]
    ambient = frozenset(one_value(service, "AmbientCapabilities").split())
    bounding = frozenset(one_value(service, "CapabilityBoundingSet").split())
    assert ambient == bounding, "the user is given exactly what the bounding set allows"
    return ambient


def test_unit_keys_say_what_the_sandbox_is(unit):
    """The parser's reading of the unit (it holds where systemd-analyze cannot run, too)."""
    assert set(unit) == {"Unit", "Service", "Install"}
    s = unit["Service"]
    expected = {
        "Type": "exec", "User": "coherence", "Group": "coherence",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        # JVMs sharing the host's /tmp are found through it (README): no private /tmp
        "PrivateTmp": "no", "PrivateDevices": "yes", "PrivateMounts": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
        # other users' processes (their JVMs, --pid) and /proc/stat, meminfo, pressure, net
        "ProtectProc": "default", "ProcSubset": "all",
        "RestrictNamespaces": "yes", "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "RemoveIPC": "yes",
        "SystemCallArchitectures": "native", "Restart": "on-failure",
        # a usage error (a bad setting, a port in use) is not fixed by restarting
        "RestartPreventExitStatus": str(EXIT_USAGE),
    }
    assert {k: s.get(k, [None])[-1] for k in expected} == expected
    assert "DynamicUser" not in s, "DynamicUser= implies PrivateTmp=: the host's JVMs would be hidden"
    assert "PrivateUsers" not in s, "capabilities in a user namespace of its own reach no other user's file"
    assert unit_capabilities(unit) == {"CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"}
    assert s["SystemCallFilter"] == ["@system-service", "~@privileged process_vm_readv process_vm_writev"]
    assert not {"ptrace", "process_vm_readv", "pidfd_getfd"} & allowed_syscalls(s["SystemCallFilter"]), \
        "CAP_SYS_PTRACE opens /proc/<pid>/root; no system call may use it to reach another process"
    assert set(one_value(s, "RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert not any(k.startswith("CPUQuota") for k in s), "a CFS quota would throttle the 1 kHz sampler"
    memory_max = one_value(s, "MemoryMax")
    assert memory_max.endswith("M") and int(memory_max[:-1]) * 1e6 >= 2 * MEASURED_RSS_BYTES
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_unit_runs_serve_with_the_settings_file(unit):
    program, *args = shlex.split(one_value(unit["Service"], "ExecStart"))
    assert os.path.basename(program) == "coherence"
    params = serve_args(args)
    assert os.path.basename(params["config_file"]) == os.path.basename(SETTINGS)
    config = load(SETTINGS)
    # out of the box the unit listens on loopback; wider binds need a web config (the file says how)
    assert is_loopback(config.exporter.listen) and config.exporter.web_config == ""
    with open(SYSUSERS) as f:
        users = [line.split() for line in f if line.strip() and not line.startswith("#")]
    assert [u[:2] for u in users] == [["u", one_value(unit["Service"], "User")]]


@pytest.fixture
def unit_copy(tmp_path) -> str:
    """The unit with ExecStart's program replaced by the installed coherence (verify checks that it
    exists); every other byte the same."""
    with open(UNIT) as f:
        text = f.read()
    program = shlex.split(one_value(unit_file(UNIT)["Service"], "ExecStart"))[0]
    assert text.count(program) == 1
    path = tmp_path / "coherence.service"
    path.write_text(text.replace(program, COHERENCE))
    return str(path)


def test_systemd_analyze_verify_finds_nothing(unit_copy):
    proc = subprocess.run([require("systemd-analyze"), "verify", unit_copy],
                          capture_output=True, text=True, timeout=SAFETY_S)
    # verify exits 0 on unknown keys and bad values, with a warning: silence is the bar
    assert proc.returncode == 0 and proc.stdout == proc.stderr == "", proc.stdout + proc.stderr


def test_systemd_analyze_security_rates_the_unit_ok(unit_copy):
    proc = subprocess.run([require("systemd-analyze"), "security", "--offline=true", "--threshold=25",
                           "--no-pager", unit_copy], capture_output=True, text=True, timeout=SAFETY_S)
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert proc.returncode == 0 and level is not None, proc.stdout + proc.stderr
    assert float(level.group(1)) <= 2.5


def syscall_groups() -> Dict[str, List[str]]:
    out = subprocess.run([require("systemd-analyze"), "syscall-filter", "--no-pager"],
                         capture_output=True, text=True, check=True, timeout=SAFETY_S).stdout
    groups: Dict[str, List[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def expand(name: str, groups: Dict[str, List[str]], seen: Optional[Set[str]] = None) -> Set[str]:
    if not name.startswith("@"):
        return {name}
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    assert name in groups, f"systemd knows no {name}"
    return set().union(*(expand(x, groups, seen) for x in groups[name]))


def allowed_syscalls(filters: List[str]) -> Set[str]:
    """What a unit's SystemCallFilter= lines allow: an allow list, less the ~ lines."""
    groups = syscall_groups()
    allowed: Set[str] = set()
    for line in filters:
        names = line.lstrip("~").split()
        found = set().union(*(expand(n, groups) for n in names))
        allowed = allowed - found if line.startswith("~") else allowed | found
    return allowed


class MetricsTarget(http.server.BaseHTTPRequestHandler):
    """A service's /metrics (Micrometer's request counters), for --scrape."""

    BODY = (b"# TYPE http_server_requests_seconds summary\n"
            b"http_server_requests_seconds_count 10\nhttp_server_requests_seconds_sum 1\n")

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, *args: Any) -> None:
        pass


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(path: str, pattern: str, proc: subprocess.Popen) -> re.Match:
    """The first line of a child's log file matching ``pattern`` (SAFETY_S only for a child that
    hangs; a file, not a pipe, so that the child never blocks on a full pipe)."""
    deadline = time.monotonic() + SAFETY_S
    text = ""
    while time.monotonic() < deadline and proc.poll() is None:
        with open(path) as f:
            text = f.read()
        found = re.search(pattern, text)
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no line matching {pattern!r} (exit {proc.poll()}): {text}")


@pytest.fixture(scope="module")
def serve_trace(tmp_path_factory) -> List[str]:
    """strace of `coherence serve` with TLS and basic auth, StatsD and a scrape target: scraped
    (OpenMetrics, gzip) and probed, a StatsD packet, then SIGTERM. The lines after its exec."""
    from _tls import Authority
    require_root()
    d = tmp_path_factory.mktemp("serve")
    ca = Authority(str(d))
    cert, key = ca.issue("server", dns=["localhost"], ips=["127.0.0.1"])
    hashed = bcrypt.hashpw(b"scraper-secret", bcrypt.gensalt(rounds=4)).decode()
    web = d / "web.yml"
    web.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": cert, "key_file": key},
                                   "basic_auth_users": {"prometheus": hashed}}))
    target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MetricsTarget)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    statsd = free_udp_port()
    trace, log = d / "trace.txt", d / "serve.log"
    cmd = [require("strace"), "-f", "-qq", "-o", str(trace), COHERENCE, "serve",
           "--listen", "127.0.0.1:0", "--web-config", str(web), "--statsd", f"127.0.0.1:{statsd}",
           "--scrape", f"http://127.0.0.1:{target.server_address[1]}/metrics"]
    with open(log, "w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
    tracee = None
    try:
        url = wait_for_line(str(log), r"serving /metrics and /healthz on (https://\S+)", proc).group(1)
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            tracee = int(f.read().split()[0])     # strace's child: coherence itself
        context = ssl.create_default_context(cafile=ca.cert_file)
        auth = {"Authorization": "Basic " + b64encode(b"prometheus:scraper-secret").decode()}
        scrape = urllib.request.Request(url + "/metrics", headers={
            **auth, "Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"})
        with urllib.request.urlopen(scrape, context=context, timeout=SAFETY_S) as answer:
            body = gzip.decompress(answer.read()).decode()
        assert "coherence_runtime_source_up" in body
        with urllib.request.urlopen(urllib.request.Request(url + "/healthz", headers=auth),
                                    context=context, timeout=SAFETY_S) as answer:
            assert answer.status == 200
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"coherence.ingress:5|c\ncoherence.egress:7|c", ("127.0.0.1", statsd))
        os.kill(tracee, signal.SIGTERM)
        assert proc.wait(timeout=SAFETY_S) == 0    # strace exits with its tracee's status
    finally:
        if proc.poll() is None:                    # a killed strace leaves its tracee running
            if tracee is not None:
                os.kill(tracee, signal.SIGKILL)
            proc.kill()
            proc.wait()
        target.shutdown()
    lines = trace.read_text().splitlines()
    assert re.match(r"^\d+\s+execve\(", lines[0]), lines[0]     # coherence's own exec: nothing before it
    return lines


def test_the_system_call_filter_allows_every_call_serve_makes(unit, serve_trace):
    calls = {m.group(1) for line in serve_trace
             for m in [re.match(r"^\d+\s+(?:<\.\.\. )?([a-z_][a-z0-9_]*)(?:\(| resumed>)", line)] if m}
    assert {"openat", "pread64", "clock_nanosleep", "accept4", "recvfrom", "connect"} <= calls
    allowed = allowed_syscalls(unit["Service"]["SystemCallFilter"])
    assert calls - allowed == set(), "calls the unit's filter would refuse (EPERM)"


def test_the_sandbox_costs_serve_nothing(unit, serve_trace):
    """RestrictAddressFamilies, MemoryDenyWriteExecute and a read-only file system, against what
    serve did."""
    families = {m.group(1) for line in serve_trace for m in [re.search(r"socket\((AF_[A-Z0-9]+)", line)] if m}
    assert families and families <= set(one_value(unit["Service"], "RestrictAddressFamilies").split())
    wx = [line for line in serve_trace if re.search(r"(mmap|mprotect)\(", line)
          and "PROT_WRITE" in line and "PROT_EXEC" in line]
    assert wx == [], "a writable and executable mapping: MemoryDenyWriteExecute would refuse it"
    writes = [line for line in serve_trace
              if (re.search(r"open(at)?\(", line) and re.search(r"O_WRONLY|O_RDWR|O_CREAT", line)
                  and "= -1" not in line)
              or re.match(r"^\d+\s+(mkdir|unlink|rename|link|symlink|chmod|chown)", line)]
    assert writes == [], "coherence writes nothing: ProtectSystem=strict costs it nothing"


# ====================================================================== capabilities, measured
TEST_USER = "coh-deploy-test"


@pytest.fixture(scope="module")
def test_user() -> Iterator[str]:
    require_root()
    created = False
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run([require("useradd"), "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", TEST_USER], check=True)
        created = True
    try:
        yield TEST_USER
    finally:
        try:
            os.rmdir(f"/tmp/hsperfdata_{TEST_USER}")   # its JVM's directory, empty once it exited
        except OSError:
            pass
        if created:
            subprocess.run(["userdel", TEST_USER], check=False)


class Jvm:
    """tests/fixtures/jvm/Churn.java (5 MB/s) under a launcher; ``pid`` is the JVM's host pid."""

    def __init__(self, launcher: List[str], classes: str) -> None:
        java = [require("java"), "-Xmx16m", "-XX:+UseSerialGC", "-cp", classes, "Churn", "5"]
        self.proc = subprocess.Popen(launcher + java, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"
        self.pid = self._java_pid(self.proc.pid)

    @staticmethod
    def _java_pid(pid: int) -> int:
        """The launcher itself (exec'd into java), or its child (unshare --fork)."""
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() == "java":
                return pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            (child,) = f.read().split()
        return int(child)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()         # Churn exits at the end of its input
            try:
                self.proc.wait(timeout=SAFETY_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def jvms(test_user) -> Iterator[Dict[str, Jvm]]:
    """Three JVMs: another user's sharing our /tmp; another user's in a "container" (its own
    mount and pid namespaces, a /tmp of its own); root's in such a container."""
    # outside /tmp: the containers' /tmp hides ours; readable by the test user
    classes = tempfile.mkdtemp(prefix="coherence-deploy-", dir="/var/tmp")
    os.chmod(classes, 0o755)
    started: Dict[str, Jvm] = {}
    try:
        subprocess.run([require("javac"), "-d", classes, CHURN], check=True)
        os.chmod(os.path.join(classes, "Churn.class"), 0o644)
        as_user = [require("setpriv"), f"--reuid={test_user}", f"--regid={test_user}", "--clear-groups"]
        container = [require("unshare"), "--mount", "--propagation", "private", "--pid", "--fork",
                     "--kill-child", "--mount-proc", "sh", "-c",
                     'mount -t tmpfs -o mode=1777 tmpfs /tmp && exec "$@"', "sh"]
        started["user, shared /tmp"] = Jvm(as_user, classes)
        started["user, container"] = Jvm(container + as_user, classes)
        started["root, container"] = Jvm(container, classes)
        yield started
    finally:
        for jvm in started.values():
            jvm.stop()
        shutil.rmtree(classes, ignore_errors=True)


def runtime_rows(capabilities: FrozenSet[str]) -> Dict[int, Dict[str, Any]]:
    """`coherence sources --json` as uid 0 with only these capabilities and no new privileges (a
    Kubernetes container: runAsUser 0, drop ALL, add ...): its JVM rows by pid."""
    caps = ",".join(["-all", *sorted("+" + c[len("CAP_"):].lower() for c in capabilities)])
    proc = subprocess.run([require("setpriv"), "--no-new-privs", f"--inh-caps={caps}",
                           f"--bounding-set={caps}", COHERENCE, "sources", "--json"],
                          capture_output=True, text=True, timeout=SAFETY_S)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return {int(r["name"].split()[1]): r for r in rows
            if r.get("family") == "runtime" and r["name"].startswith("jvm ")}


def seen(rows: Dict[int, Dict[str, Any]], jvm: Jvm) -> str:
    row = rows.get(jvm.pid)
    if row is None:
        return "not seen"
    if row["available"]:
        return "read"
    # and says what would let it in
    assert "permission denied" in row["reason"] and "CAP_DAC_READ_SEARCH" in row["reason"], row
    return "permission denied"


def test_each_capability_is_needed_and_the_units_are_enough(unit, jvms):
    """The table in the README ("What each source needs"), measured."""
    kept = unit_capabilities(unit)
    measured = {}
    for caps in (frozenset(), frozenset({"CAP_DAC_READ_SEARCH"}), frozenset({"CAP_SYS_PTRACE"}), kept):
        rows = runtime_rows(caps)
        measured[caps] = {name: seen(rows, jvm) for name, jvm in jvms.items()}
    assert measured == {
        frozenset(): {"user, shared /tmp": "permission denied", "user, container": "not seen",
                      "root, container": "not seen"},
        frozenset({"CAP_DAC_READ_SEARCH"}): {"user, shared /tmp": "read", "user, container": "not seen",
                                             "root, container": "not seen"},
        frozenset({"CAP_SYS_PTRACE"}): {"user, shared /tmp": "permission denied",
                                        "user, container": "permission denied", "root, container": "read"},
        kept: {"user, shared /tmp": "read", "user, container": "read", "root, container": "read"},
    }


def test_host_sources_need_no_capability():
    """cgroup files, /proc/stat, meminfo, vmstat, PSI, /proc/net/snmp: the same sources in use
    with every capability dropped as with all of them."""
    def in_use(extra: List[str]) -> Dict[str, str]:
        proc = subprocess.run([*extra, COHERENCE, "sources", "--json"], capture_output=True, text=True,
                              timeout=SAFETY_S, check=True)
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        return {r["family"]: r["name"] for r in rows if r.get("in_use") and r.get("family") != "runtime"}
    require_root()
    dropped = in_use([require("setpriv"), "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"])
    assert set(dropped) == {"cpu", "memory", "pressure", "requests"}
    assert dropped == in_use([])


# ====================================================================== container image
def instructions(path: str) -> List[Tuple[str, str, List[str]]]:
    """(INSTRUCTION, arguments, the comment lines just above it) of a Containerfile."""
    out: List[Tuple[str, str, List[str]]] = []
    comments: List[str] = []
    pending = ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not pending and line.lstrip().startswith("#"):
                comments.append(line.lstrip("# "))
                continue
            if not line.strip() and not pending:
                comments = []
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = (pending + line).strip(), ""
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), args.strip(), comments))
            comments = []
    assert not pending, "a continued line at the end of the file"
    return out


def stages(steps: List[Tuple[str, str, List[str]]]) -> List[Tuple[str, List[Tuple[str, str, List[str]]]]]:
    out: List[Tuple[str, List[Tuple[str, str, List[str]]]]] = []
    for keyword, args, comments in steps:
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args, re.I)
            assert m, f"every stage is named: FROM {args}"
            out.append((m.group(2), []))
        elif keyword != "ARG" or out:
            assert out, f"{keyword} before FROM"
            out[-1][1].append((keyword, args, comments))
    return out


def copy_sources(args: str) -> Tuple[Optional[str], List[str], str]:
    """(--from stage, sources, destination) of a COPY."""
    words = shlex.split(args)
    origin = None
    while words[0].startswith("--"):
        flag = words.pop(0)
        if flag.startswith("--from="):
            origin = flag.split("=", 1)[1]
    return origin, words[:-1], words[-1]


def git_files() -> List[str]:
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def dockerignore() -> List[Tuple[bool, re.Pattern]]:
    """.dockerignore as (exception?, regex) pairs, in Docker's syntax (**, *, ?; ! re-includes)."""
    rules = []
    with open(DOCKERIGNORE) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            pattern = line.lstrip("!").strip("/")
            regex = ""
            i = 0
            while i < len(pattern):
                if pattern.startswith("**/", i):
                    regex, i = regex + "(?:.*/)?", i + 3
                elif pattern.startswith("**", i):
                    regex, i = regex + ".*", i + 2
                elif pattern[i] == "*":
                    regex, i = regex + "[^/]*", i + 1
                elif pattern[i] == "?":
                    regex, i = regex + "[^/]", i + 1
                else:
                    regex, i = regex + re.escape(pattern[i]), i + 1
            rules.append((exception, re.compile(regex + "(?:/.*)?")))   # a directory excludes its files
    return rules


def ignored(path: str, rules: List[Tuple[bool, re.Pattern]]) -> bool:
    verdict = False
    for exception, regex in rules:
        if regex.fullmatch(path):
            verdict = not exception
    return verdict


def test_containerfile_stages_user_and_command():
    steps = instructions(CONTAINERFILE)
    built = stages(steps)
    names = [name for name, _ in built]
    assert len(built) >= 2 and len(set(names)) == len(names), "multi-stage, named stages"
    final = built[-1][1]
    assert not any(k == "RUN" and ("gcc" in a or "apt-get install" in a) for k, a, _ in final), \
        "the compiler stays in the build stage"
    users = [a for k, a, _ in final if k == "USER"]
    assert users, "the image runs as a user of its own"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), \
        "a numeric non-root user (runAsNonRoot can verify it)"
    entry = [json.loads(a) for k, a, _ in final if k == "ENTRYPOINT"]
    cmd = [(json.loads(a), comments) for k, a, comments in final if k == "CMD"]
    assert len(entry) == 1 and len(cmd) == 1, "exec form, once"
    program, args = entry[0], cmd[0][0]
    assert program == ["/opt/coherence/bin/coherence"]
    assert any(k == "RUN" and "python -m venv /opt/coherence" in a for k, a, _ in final)
    params = serve_args(args)
    listen = params["exporter__listen"]
    port = parse_listen(listen)[1]
    assert [a for k, a, _ in final if k == "EXPOSE"] == [str(port)]
    if not is_loopback(listen) and not params["exporter__web_config"]:
        reason = " ".join(line for k, _, comments in final if k in ("ENTRYPOINT", "CMD") for line in comments)
        assert "loopback" in reason and "--web-config" in reason, \
            "a bind beyond loopback without a web config says why, and how to add one"


def test_containerfile_copies_what_the_repository_has():
    built = stages(instructions(CONTAINERFILE))
    tracked = git_files()
    rules = dockerignore()
    for i, (_, steps) in enumerate(built):
        for keyword, args, _ in steps:
            if keyword not in ("COPY", "ADD"):
                continue
            assert keyword == "COPY", "COPY, not ADD (no URLs, no archives unpacked)"
            origin, sources, _dest = copy_sources(args)
            if origin is not None:
                assert origin in [name for name, _ in built[:i]], f"COPY --from={origin}: an earlier stage"
                continue
            for source in sources:
                inside = [f for f in tracked if f == source.rstrip("/") or f.startswith(source.rstrip("/") + "/")]
                assert inside, f"COPY {source}: nothing tracked there"
                assert not [f for f in inside if ignored(f, rules)], f"COPY {source}: .dockerignore drops it"


def test_dockerignore_keeps_local_builds_out():
    rules = dockerignore()
    for path in (".venv/bin/python", "build/lib/coherence/_core.so", "coherence.egg-info/PKG-INFO",
                 "coherence/_core.cpython-311-x86_64-linux-gnu.so", "csrc/coherence/_core.c",
                 "coherence/__pycache__/cli.cpython-311.pyc", "coherence/_core.pxd",
                 "coherence/coh_atomic.h", ".git/HEAD", ".hypothesis/x", "dist/coherence.whl"):
        assert ignored(path, rules), path
    assert not ignored("csrc/coherence/_core.pxd", rules) and not ignored("coherence/cli.py", rules)


def files_under(source: str) -> List[str]:
    """The work tree's files at a COPY source (a file, or a directory walked), relative to ROOT."""
    path = os.path.join(ROOT, source)
    if not os.path.isdir(path):
        return [source]
    return [os.path.relpath(os.path.join(top, name), ROOT) for top, _, names in os.walk(path) for name in names]


def test_the_copied_sources_build_the_wheel(tmp_path):
    """What the build stage runs (pip wheel), over exactly what its COPY lines bring from this
    work tree less .dockerignore; offline (this venv's Cython and setuptools)."""
    (build_stage, steps), *_ = stages(instructions(CONTAINERFILE))
    rules = dockerignore()
    context = tmp_path / "context"
    for keyword, args, _ in steps:
        if keyword != "COPY":
            continue
        _origin, sources, dest = copy_sources(args)
        for source in sources:
            assert dest in ("./", source), "each source lands at its own path under WORKDIR"
            for rel in sorted(files_under(source)):
                if not ignored(rel, rules):
                    (context / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(os.path.join(ROOT, rel), context / rel)
    assert any(k == "RUN" and "pip wheel" in a for k, a, _ in steps)
    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-cache-dir", "--wheel-dir", str(wheels), "."],
                          cwd=context, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = wheels.iterdir()
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for needed in (r"coherence/_core\..*\.so", r"coherence/_sampler\..*\.so", r"coherence/_core\.pxd",
                   r"coherence/coh_atomic\.h", r"coherence/py\.typed", r"coherence/report\.schema\.json",
                   r"coherence/sinks/prometheus\.py"):
        assert any(re.fullmatch(needed, n) for n in names), needed
    assert "coherence = coherence.cli:run" in entry_points


# ====================================================================== Kubernetes
@pytest.fixture(scope="module")
def manifests() -> Dict[str, Dict[str, Any]]:
    with open(DAEMONSET) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs)
    return by_kind


@pytest.mark.parametrize("version", ["1.25.0", kubernetes_validate.latest_version()])
def test_manifests_match_the_kubernetes_schemas(manifests, version):
    assert set(manifests) == {"ServiceAccount", "ConfigMap", "DaemonSet", "NetworkPolicy"}
    for doc in manifests.values():
        kubernetes_validate.validate(doc, version, strict=True)    # raises on an unknown field


def test_daemonset_pod_watches_the_node_with_two_capabilities(manifests, unit):
    ds = manifests["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and pod.get("hostNetwork", False) is False
    assert pod["automountServiceAccountToken"] is False
    assert {"operator": "Exists"} in pod["tolerations"], "a sentinel on every node"
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"CAP_" + cap for cap in sc["capabilities"]["add"]} == unit_capabilities(unit)
    # Kubernetes sets no ambient capabilities: added ones reach only uid 0
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert all(m["readOnly"] is True for m in mounts.values())
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {"cgroup": "/sys/fs/cgroup"}, "the node's cgroup tree, nothing else of the host"
    assert mounts["cgroup"]["mountPath"] == "/sys/fs/cgroup"
    r = c["resources"]
    assert milli(r["requests"]["cpu"]) <= milli(r["limits"]["cpu"])
    assert milli(r["limits"]["cpu"]) >= SAFE_CPU_LIMIT_MILLI
    assert mebibytes(r["limits"]["memory"]) * 2**20 >= 2 * MEASURED_RSS_BYTES
    assert mebibytes(r["requests"]["memory"]) * 2**20 >= MEASURED_RSS_BYTES


def milli(cpu: str) -> float:
    return float(cpu[:-1]) if cpu.endswith("m") else float(cpu) * 1000


def mebibytes(memory: str) -> float:
    assert memory.endswith("Mi"), memory
    return float(memory[:-2])


def test_daemonset_serves_probes_and_scrapes_on_the_configured_port(manifests, tmp_path):
    ds, cm = manifests["DaemonSet"], manifests["ConfigMap"]
    template = ds["spec"]["template"]
    (c,) = template["spec"]["containers"]
    params = serve_args(c["args"])
    config_dir = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["config"]
    (name,) = cm["data"]
    assert params["config_file"] == f"{config_dir}/{name}"
    settings = tmp_path / name
    settings.write_text(cm["data"][name])
    config = load(str(settings))
    host, port = parse_listen(config.exporter.listen)
    assert host == "0.0.0.0", "the pod IP: probes and Prometheus never reach the pod's loopback"
    (p,) = c["ports"]
    assert p["containerPort"] == port and p["protocol"] == "TCP"
    notes = template["metadata"]["annotations"]
    assert notes == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": p["name"]}, probe
    # the liveness probe gives up after a minute of staleness, well past exporter.stale_after_s
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 10 * config.exporter.stale_after_s
    # deploy/prometheus/prometheus.example.yml's coherence-kubernetes job keeps pods by this label
    labels = template["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "coherence"
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    policy = manifests["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert [port["port"] for rule in policy["ingress"] for port in rule["ports"]] == [p["name"]]
    assert ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 5, "the 5 s drain fits"


# ====================================================================== Grafana dashboard
PROMQL_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|<=|>=|=~|!~|[-+*/%^<>=(),{}@])
""", re.X)
# words that are never a metric: binary operators, modifiers, literals, and the aggregation
# operators (keywords of the grammar: `sum by (x) (...)` has no "(" right after `sum`)
KEYWORDS = {"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan", "start", "end",
            "sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
            "count_values", "group", "limitk", "limit_ratio"}
# followed by a parenthesised list of label names
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def promql_tokens(expr: str) -> List[Tuple[str, str]]:
    out, i = [], 0
    while i < len(expr):
        m = PROMQL_TOKEN.match(expr, i)
        assert m, f"cannot read PromQL at {expr[i:i + 20]!r} in {expr!r}"
        if m.lastgroup != "space":
            out.append((m.lastgroup or "", m.group()))
        i = m.end()
    return out


def metric_names(expr: str) -> Set[str]:
    """The metric names an expression selects: identifiers that are not functions or
    aggregations (followed by "("), keywords, label names in by/on/... lists or in a selector's
    braces; plus the values of __name__ matchers."""
    tokens = promql_tokens(expr)
    names: Set[str] = set()
    depth_braces, i = 0, 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if text == "{":
            depth_braces += 1
        elif text == "}":
            depth_braces -= 1
        elif kind == "ident" and depth_braces:
            if text == "__name__" and following in ("=", "==") and tokens[i + 2][0] == "string":
                names.add(tokens[i + 2][1][1:-1])
            # other label names in a selector: not metrics
        elif kind == "ident" and text in LABEL_LISTS:
            if following == "(":
                while tokens[i][1] != ")":
                    i += 1
        elif kind == "ident" and following != "(" and text.lower() not in KEYWORDS:
            names.add(text)
        i += 1
    assert depth_braces == 0, expr
    return names


@pytest.mark.parametrize("expr, names", [
    ('sum by (job, le) (rate(a_bucket{job=~"x", le!="by"}[5m]))', {"a_bucket"}),
    ('histogram_quantile(0.99, sum without (instance) (rate(b_total[1m] offset 5m)))', {"b_total"}),
    ('x{state="CRITICAL"} == bool 1 and on (instance) group_left (process) y', {"x", "y"}),
    ('max by (instance) ((s{state="OK"} == 1) * 1 or (s{state="WARNING"} == 1) * 2)', {"s"}),
    ('{__name__="only_by_name", detector="fever"} > 1e3', {"only_by_name"}),
    ('count(up) unless ignoring(job) absent(nothing_named_or{a="sum(x)"})', {"up", "nothing_named_or"}),
    ('time() - rec:ord:avg{job=~".+"} / 1e6 + inf', {"rec:ord:avg"}),
])
def test_the_promql_reader_finds_metric_names_only(expr, names):
    assert metric_names(expr) == names


@pytest.fixture(scope="module")
def dashboard() -> Dict[str, Any]:
    with open(DASHBOARD) as f:
        return json.load(f)


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$job": ".+", "$instance": ".+"}


def grafana_to_promql(expr: str) -> str:
    """A panel's query with Grafana's variables as Prometheus would receive them (All selected)."""
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a variable the dashboard does not define: {expr}"
    return expr


def dashboard_queries(dashboard: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(where, PromQL) of every panel target, and the selectors of the variables' label_values()."""
    out = [(f"panel {p['id']} {p['title']!r} {t['refId']}", grafana_to_promql(t["expr"]))
           for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)", var["query"]["query"])
            assert m, var["query"]
            out.append((f"variable {var['name']}", grafana_to_promql(m.group(1))))
    return out


def rows(dashboard: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = {}
    current = None
    for p in dashboard["panels"]:
        if p["type"] == "row":
            current = p["title"]
            out[current] = list(p.get("panels", []))
        else:
            assert current is not None, "every panel is in a row"
            out[current].append(p)
    return out


def exprs(panel: Dict[str, Any]) -> str:
    return " ".join(t["expr"] for t in panel.get("targets", []))


def test_dashboard_layout_and_variables(dashboard):
    assert dashboard["uid"] == "coherence" and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    cells: Dict[Tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert all(t["datasource"] == p["datasource"] for t in p["targets"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)


def test_a_row_per_detector_the_sentinel_and_the_fleet(dashboard):
    by_row = rows(dashboard)
    titles = list(by_row)
    assert FLEET_RECORD in " ".join(exprs(p) for p in by_row[titles[0]]), "the fleet view comes first"
    assert all(FLEET_RECORD in exprs(p) or "coherence_build_info" in exprs(p) or "coherence_healthy" in exprs(p)
               for p in by_row[titles[0]])
    for detector in ("seizure", "fever", "amplification"):
        (title,) = [t for t in titles if t.lower().startswith(detector)]
        panels = by_row[title]
        mine = f'detector="{detector}"'
        timeline = [p for p in panels if p["type"] == "state-timeline" and "coherence_detector_state" in exprs(p)]
        assert timeline and mine in exprs(timeline[0]), detector
        codes = {int(k): v["text"] for k, v in timeline[0]["fieldConfig"]["defaults"]["mappings"][0]["options"].items()}
        assert set(codes.values()) == {"WARMUP", "OK", "WARNING", "CRITICAL", "UNAVAILABLE"}
        for code, state in codes.items():      # the query gives each state its mapped number
            assert f'state="{state}"}} == 1) * {code})' in exprs(timeline[0]), (detector, state)
        assert any("coherence_detector_value" in exprs(p) and "coherence_detector_limit" in exprs(p)
                   and mine in exprs(p) for p in panels), f"{detector}: value against limit"
        assert any("coherence_detector_veto" in exprs(p) and mine in exprs(p) for p in panels), detector
    (sentinel,) = [t for t in titles if "sentinel" in t.lower()]
    used = " ".join(exprs(p) for p in by_row[sentinel])
    for series in ("coherence_sampler_ticks_total", "coherence_sampler_tick_lateness_seconds_bucket",
                   "coherence_sampler_overruns_total", "coherence_sampler_cpu_seconds_total",
                   "process_cpu_seconds_total", "coherence_healthy"):
        assert series in used, series


def parsed_samples(text: str) -> Dict[Tuple[str, FrozenSet[Tuple[str, str]]], Tuple[float, bool]]:
    """{(sample name, labels): (value, is it a counter's)} of a text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        counting = family.type in ("counter", "histogram", "summary")
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, frozenset(s.labels.items()))] = (s.value, counting)
    return out


@pytest.fixture(scope="module")
def served() -> Dict[Tuple[str, FrozenSet[Tuple[str, str]]], Tuple[float, bool]]:
    """Every sample a real exporter serves over HTTP (a sentinel on this host with StatsD and the
    runtime poller), and those only some reports have (a cascade, a JVM in a GC spiral)."""
    from coherence import hooks
    from coherence.sentinel import Sentinel
    sink = PrometheusSink(("127.0.0.1", 0))
    sentinel = Sentinel.from_config(Config(), statsd=("127.0.0.1", 0), sinks=[sink])
    sink.watch(sentinel.sampler, sentinel.listener, sentinel.runtime, (hooks.INGRESS, hooks.EGRESS))
    with sentinel:
        sentinel.run(0.6)
        with urllib.request.urlopen(sink.url + "/metrics", timeout=SAFETY_S) as answer:
            samples = parsed_samples(answer.read().decode())
    for report in scripted_reports() + runtime_reports():
        registry = CollectorRegistry(auto_describe=False)
        series = Series()
        series.update(report)
        registry.register(series)
        for key, value in parsed_samples(generate_latest(registry).decode()).items():
            samples.setdefault(key, value)
    # a series without labels that this host's sources do not give (pgalloc under a cgroup v1
    # memory source): docs/metrics.md lists it, and test_sinks_prometheus holds the list to
    # what the exporter serves
    for name, kind in documented_without_labels():
        if not any(n == name for n, _ in samples):
            samples[(name, frozenset())] = (1.0, kind == "counter")
    return samples


def documented_without_labels() -> List[Tuple[str, str]]:
    """(name, type) of the series docs/metrics.md lists with an empty labels column."""
    with open(os.path.join(ROOT, "docs", "metrics.md")) as f:
        return re.findall(r"^\| `(coherence_[a-z0-9_]+)` \| (gauge|counter) \| \|", f.read(), re.M)


def recording_rules() -> Dict[str, str]:
    """The fleet rule the dashboard uses: from deploy/prometheus/coherence.rules.yml once it is in
    the tree, else as issue 11 defines it."""
    if os.path.exists(RULES):
        with open(RULES) as f:
            groups = yaml.safe_load(f)["groups"]
        return {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    return {FLEET_RECORD: FLEET_EXPR}


def test_every_query_names_a_served_series_or_the_fleet_rule(dashboard, served):
    names = {name for name, _ in served}
    records = recording_rules()
    assert records[FLEET_RECORD].replace(" ", "") == FLEET_EXPR.replace(" ", "")
    unknown = {where: sorted(metric_names(e) - names - set(records))
               for where, e in dashboard_queries(dashboard)}
    assert {w: u for w, u in unknown.items() if u} == {}
    used = set().union(*(metric_names(e) for _, e in dashboard_queries(dashboard)))
    assert FLEET_RECORD in used and len(used & names) >= 30


def test_every_query_returns_data_from_the_served_series(dashboard, served, tmp_path):
    """promtool runs Prometheus's own engine over the served samples (two instances of one job,
    counters rising), with the recording rule: every panel's query must return something. A
    wrong label value, a misspelt label or a series the exporter does not make comes back empty."""
    promtool = require("promtool")
    steps = 40                                   # 10 minutes at 15 s
    series = []
    for instance in ("node-a:21950", "node-b:21950"):
        for (name, labels), (value, counting) in sorted(served.items(), key=str):
            all_labels = dict(labels, job="coherence", instance=instance)
            selector = ",".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(all_labels.items()))
            rise = 1 if counting else 0
            series.append({"series": f"{name}{{{selector}}}", "values": f"{value!r}+{rise}x{steps}"})
    record_file = tmp_path / "records.yml"
    record_file.write_text(yaml.safe_dump({"groups": [{"name": "fleet", "rules": [
        {"record": name, "expr": expr} for name, expr in recording_rules().items()]}]}))
    checks = [{"expr": f"count({expr}) > bool 0", "eval_time": "9m",
               "exp_samples": [{"labels": "{}", "value": 1}]} for _, expr in dashboard_queries(dashboard)]
    test_file = tmp_path / "dashboard_test.yml"
    test_file.write_text(yaml.safe_dump({
        "rule_files": [str(record_file)], "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": series, "promql_expr_test": checks}]},
        allow_unicode=True))
    proc = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True,
                          timeout=SAFETY_S)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    assert "SUCCESS" in proc.stdout

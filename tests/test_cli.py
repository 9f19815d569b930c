"""The `coherence` command as a user meets it: click's runner for the commands, the real
binary for live runs, a pseudo-terminal for the dashboard, and one line for every bad input."""
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from click.testing import CliRunner

import coherence
from coherence.cli import main, run
from coherence.sinks.nagios import check_line

SCHEMA = json.load(open(os.path.join(os.path.dirname(coherence.__file__), "report.schema.json")))
# The installed console script, as a user runs it (not `python -c`, which would import the
# uncompiled source tree from the current directory).
COHERENCE = [os.path.join(os.path.dirname(sys.executable), "coherence")]
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def has_colour(text):
    """Any SGR sequence that sets a foreground or background colour (bold alone is not one)."""
    for params in SGR.findall(text):
        codes = [int(p) for p in params.split(";") if p]
        if any(30 <= c <= 38 or 40 <= c <= 48 or 90 <= c <= 97 or 100 <= c <= 107 for c in codes):
            return True
    return False


def cli(*args, timeout=60, env=None, **kw):
    return subprocess.run(COHERENCE + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


# ------------------------------------------------------------------ bad input: one line, no traceback
@pytest.mark.parametrize("args, message", [
    (["--live", "--hz", "0"], "Invalid value for '--hz': 0.0 is not in the range 1<=x<=2000"),
    (["--live", "--hz", "-5"], "Invalid value for '--hz'"),
    (["--live", "--hz", "abc"], "'abc' is not a valid float"),
    (["--live", "--hz", "5"], "is shorter than one tick at 5 Hz: raise hz to at least 10"),
    (["--live", "--resolution", "0.0001"],
     "the sampler reads at most 2000 times a second: raise the resolution to at least 0.001 s"),
    (["--live", "--pid", "abc"], "'abc' is not a process id (a whole number from 1)"),
    (["--live", "--pid", "0"], "'0' is not a process id"),
    (["--live", "--pid", "-3"], "is not a process id"),
    (["--live", "--window", "0.1"], "must hold at least two buckets"),
    (["--live", "--config", "/nonexistent.toml"], "config file /nonexistent.toml: no such file"),
    (["--live", "--pid", "4194305"], "no process 4194305"),
    (["--live", "--statsd", "localhost:notaport"], "is not HOST:PORT"),
    (["--live", "--simulate"], "--live and --simulate are exclusive"),
    (["--simulate", "--scenario", "nope"], "choose from story"),
    (["--nonsense"], "--nonsense"),
    (["--json", "--duration", "5"], "say what to do: --live"),
    (["--simulate", "--pid", "1"], "--simulate replays a script"),
    (["--live", "--duration", "nan"], "not a positive, finite number of seconds"),
    (["--live", "--duration", "inf"], "not a positive, finite number of seconds"),
    (["--live", "--seed", "3"], "--seed is for --simulate"),
    (["--hz", "1000"], "say what to do: --live"),
    (["--simulate", "--scenario", "check"], "choose from story"),
    (["sources", "--pid", "4194305"], "no process 4194305"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert run(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("coherence: ") and message in err, err
    assert "Traceback" not in err


def test_an_invalid_config_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "c.toml"
    bad.write_text("[seizure]\nstd_limit_pct = 'lots'\n")
    assert run(["--live", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"coherence: config file {bad}: seizure.std_limit_pct must be a number, got 'lots'\n"


def test_a_statsd_port_in_use_is_one_line(capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert run(["--live", "--duration", "1", "--statsd", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err == f"coherence: cannot listen for StatsD on 127.0.0.1:{port}: address already in use\n"


def test_check_reports_bad_arguments_as_unknown(capsys):
    assert run(["check", "--hz", "0"]) == 3
    assert "Invalid value for '--hz'" in capsys.readouterr().err
    assert run(["check", "--pid", "4194305"]) == 3
    assert run(["--hz", "0", "check"]) == 3
    assert run(["--hz", "500", "check"]) == 3
    assert "options go after the command" in capsys.readouterr().err
    assert run(["--seed", "3", "check"]) == 3
    assert run(["check", "--duration", "nan"]) == 3


def test_check_is_unknown_on_bad_input_in_any_order_and_nothing_leaks(capsys):
    # each call on its own: the exit code depends on the command, not on what ran before
    assert run(["--live", "--hz", "0"]) == 2
    assert run(["--hz", "0", "check"]) == 3
    assert run(["check", "--pid", "4194305"]) == 3
    assert run(["--live", "--hz", "0"]) == 2
    assert run(["check", "--seed", "3"]) == 3
    assert run(["check", "--config", "/nonexistent.toml"]) == 3
    assert run(["check", "--statsd", "localhost:notaport"]) == 3
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 7 and all(e.startswith("coherence: ") for e in errors)


@pytest.mark.parametrize("args, message", [
    (["live", "--seed", "3"], "--seed is for coherence simulate"),
    (["simulate", "--pid", "1"], "coherence simulate replays a script: --pid is for coherence live"),
    (["--simulate", "--duration", "3", "--statsd", "x"],
     "--simulate replays a script: --duration, --statsd are for --live"),
    (["--live", "--seed", "3", "--speed=2"], "--seed, --speed are for --simulate"),
    (["--live", "check"], "options go after the command: coherence check [OPTIONS]"),
    (["live", "--simulate"], "No such option"),
    (["simulate", "--scenario", "nope"], "choose from story"),
])
def test_subcommands_name_where_a_stray_option_belongs(args, message, capsys):
    assert run(args) == (3 if "check" in args else 2)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_help_documents_every_flag():
    out = CliRunner().invoke(main, ["--help"]).output
    for flag in ("--live", "--json", "--duration", "--hz", "--pid", "--statsd", "--config",
                 "--simulate", "--scenario", "--seed", "--speed", "--seizure-std", "--for", "--clear"):
        assert flag in out
    assert "check" in out and "sources" in out
    assert "--duration" in CliRunner().invoke(main, ["check", "--help"]).output


def test_every_flag_of_every_command_is_in_its_help_and_the_main_help():
    from coherence.config import Config
    top = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    for name, command in main.commands.items():
        r = CliRunner().invoke(main, [name, "--help"])
        assert r.exit_code == 0
        text = " ".join(r.output.split())
        for param in command.params:
            for opt in param.opts:
                assert opt in text, (name, opt)
                if name in ("live", "simulate"):
                    assert opt in top, opt
    # the limits' defaults are Config's, in every command that takes them
    for name in ("live", "simulate", "check"):
        text = " ".join(CliRunner().invoke(main, [name, "--help"]).output.split())
        assert f"[default: {Config().sampler.hz:g}]" in text and "[default: 512]" in text
    for alias, name in (("--live", "live"), ("--simulate", "simulate")):
        assert CliRunner().invoke(main, [alias, "--help"]).output == \
            CliRunner().invoke(main, [name, "--help"]).output


def test_no_arguments_prints_the_help():
    r = CliRunner().invoke(main, [])
    assert r.exit_code == 0 and "coherence --live" in r.output


def test_sources_json_lists_every_family():
    r = CliRunner().invoke(main, ["sources", "--json"])
    assert r.exit_code == 0
    rows = [json.loads(line) for line in r.output.splitlines()]
    # a JVM running anywhere on the host (another test's) is a "runtime" row, rightly
    families = {row["family"] for row in rows[:-1]}
    assert {"cpu", "memory", "pressure", "requests"} <= families <= {"cpu", "memory", "pressure", "requests",
                                                                     "runtime"}
    assert rows[-1]["cpus"] > 0


# ------------------------------------------------------------------ the real thing
def test_live_json_lines_follow_the_schema_and_stop_after_duration():
    t0 = time.monotonic()
    r = cli("--live", "--json", "--duration", "3", "--hz", "500")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 20
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) >= 3                    # about one per second, plus state changes
    for obj in lines:
        jsonschema.validate(obj, SCHEMA)
        assert set(obj["detectors"]) == {"seizure", "fever", "amplification"}
    assert lines[-1]["sampler"]["achieved_hz"] > 0
    assert "\x1b" not in r.stdout


def test_live_without_a_terminal_prints_plain_lines_without_animation():
    r = cli("--live", "--duration", "2", "--hz", "200")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and r.stdout.count("\n") >= 2
    assert all(("seizure" in line and "fever" in line) for line in r.stdout.splitlines())


def test_sigterm_leaves_cleanly():
    p = subprocess.Popen(COHERENCE + ["--live", "--json", "--hz", "200"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline()   # running and reporting
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
    finally:
        p.kill()
    assert p.returncode == 0 and "Traceback" not in err


def test_check_prints_one_nagios_line_and_exits_by_its_status():
    r = cli("check", "--duration", "7", "--hz", "500")
    assert r.returncode in (0, 1, 2, 3), r.stderr
    line = r.stdout.strip()
    assert "\n" not in line
    status = re.match(r"COHERENCE (OK|WARNING|CRITICAL|UNKNOWN) - ", line)
    assert status, line
    assert {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}[status.group(1)] == r.returncode
    perf = line.split(" | ", 1)[1]
    assert re.search(r"seizure_cpu_std_pct=[0-9.]+;20;;0;100", perf), perf
    assert "sampler_hz=" in perf


@pytest.mark.parametrize("args", [
    ["--json", "--speed", "1e9", "--scenario", "storm", "--seed", "2"],
    ["--speed", "1e9", "--scenario", "seizure", "--hz", "500"],
])
def test_simulate_and_its_alias_give_identical_output(args):
    runner = CliRunner()
    sub = runner.invoke(main, ["simulate"] + args)
    alias = runner.invoke(main, ["--simulate"] + args)
    reordered = runner.invoke(main, args[:1] + ["--simulate"] + args[1:])
    assert sub.exit_code == alias.exit_code == reordered.exit_code == 0, sub.output
    assert sub.output == alias.output == reordered.output
    assert sub.output.count("\n") > 100


def test_live_and_its_alias_write_the_same_lines():
    lines = {}
    for form in (["live"], ["--live"]):
        r = cli(*form, "--json", "--duration", "1", "--hz", "200")
        assert r.returncode == 0, r.stderr
        lines[form[0]] = [json.loads(line) for line in r.stdout.splitlines()]
        for obj in lines[form[0]]:
            jsonschema.validate(obj, SCHEMA)
    shape = {k: [sorted(o) for o in v] for k, v in lines.items()}
    assert shape["live"][0] == shape["--live"][0]
    plain = cli("live", "--duration", "1", "--hz", "200")
    assert plain.returncode == 0 and all(" seizure=" in line for line in plain.stdout.splitlines())


class FakeSentinel:
    """Stands in for the live sentinel: its sinks get the scripted reports up to `until`."""

    until = 0.0

    def __init__(self, sinks):
        from coherence.sinks.base import opened
        self.sinks, self.opened = sinks, opened
        self._ctx: Any = None

    @classmethod
    def from_config(cls, config, pid=None, statsd=None, statsd_prefix="coherence", sinks=()):
        return cls(list(sinks))

    def __enter__(self):
        self._ctx = self.opened(self.sinks)
        self.emit = self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)

    def run(self, duration=None, on_report=None):
        from test_sinks_jsonl import scripted_reports
        reports = scripted_reports(until=self.until)
        for r in reports:
            self.emit(r)
        return reports[-1]


@pytest.mark.parametrize("until, code, status", [(0.0, 3, "UNKNOWN"), (12.0, 0, "OK"),
                                                 (6.0, 1, "WARNING"), (25.0, 2, "CRITICAL")])
def test_check_exits_by_its_status(until, code, status, monkeypatch, capsys):
    import coherence.sentinel
    monkeypatch.setattr(coherence.sentinel, "Sentinel", type("S", (FakeSentinel,), {"until": until}))
    assert run(["check", "--duration", "1"]) == code
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"COHERENCE {status} - ")


def test_simulate_json_is_deterministic_and_ends_with_the_lead_time_table():
    runs = [cli("--simulate", "--json", "--speed", "1e9", "--scenario", "seizure", "--seed", "3")
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    lines = [json.loads(line) for line in runs[0].stdout.splitlines()]
    for obj in lines:
        jsonschema.validate(obj, SCHEMA)
    assert any(obj["detectors"]["seizure"]["state"] == "CRITICAL" for obj in lines)
    assert "lead" in runs[0].stderr.lower()


def read_pty(fd, proc, timeout):
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:          # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out.decode("utf-8", "replace")


@pytest.mark.parametrize("no_color", [False, True])
def test_simulate_in_a_terminal_shows_the_dashboard_and_the_table(no_color):
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    if no_color:
        env["NO_COLOR"] = "1"
    # a finite speed: the dashboard redraws at most 10 times a second, so the fault must last
    # a few frames of wall time to be seen
    proc = subprocess.Popen(COHERENCE + ["--simulate", "--scenario", "seizure", "--speed", "40"],
                            stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    try:
        screen = read_pty(master, proc, 60)
        proc.wait(10)
    finally:
        proc.kill()
        os.close(master)
    assert proc.returncode == 0, screen[-2000:]
    for text in ("seizure", "fever", "amplification", "CRITICAL", "SHED_LOAD"):
        assert text in screen, text
    assert "lead" in screen.lower()
    assert has_colour(screen) != no_color


def test_check_line_format_on_a_simulated_report():
    from coherence import simulate
    from coherence.config import Config
    reports: list = []
    simulate.run(Config().validate(), scenario="seizure", seed=0, speed=simulate.MAX_SPEED,
                 on_report=reports.append)
    line = check_line(reports[-1])
    assert line.startswith("COHERENCE ") and " | seizure_cpu_std_pct=" in line


def test_ctrl_c_leaves_the_live_dashboard_cleanly():
    master, slave = pty.openpty()
    # PYTHONFAULTHANDLER: should it hang, SIGABRT below prints every thread's stack to the pty
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40",
           "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(COHERENCE + ["--live", "--hz", "200"], stdin=slave, stdout=slave,
                            stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    try:
        screen = ""
        deadline = time.monotonic() + 20
        while "seizure" not in screen and time.monotonic() < deadline:
            screen += read_pty(master, proc, 0.5)
        assert "seizure" in screen, screen[-500:]
        os.killpg(proc.pid, signal.SIGINT)          # what Ctrl-C sends to the foreground group
        screen += read_pty(master, proc, 10)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGABRT)
            stacks = read_pty(master, proc, 5)
            pytest.fail(f"still running 20 s after Ctrl-C; its threads:\n{stacks[-6000:]}")
    finally:
        proc.kill()
        os.close(master)
    assert proc.returncode == 0
    assert "Traceback" not in screen and "KeyboardInterrupt" not in screen
    assert "\x1b[?25h" in screen                    # the cursor is given back


# ------------------------------------------------------------------ the exporter: serve, --listen
def started_url(stream) -> str:
    """The URL `coherence serve` (or live --listen) says it serves on, from its stderr."""
    line = stream.readline()
    match = re.search(r"serving /metrics and /healthz on (https?://\S+)", line)
    assert match, line
    return match.group(1)


def http_get(url: str, timeout: float = 20.0):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.parametrize("args, message", [
    (["serve", "--listen", "localhost:notaport"], "Invalid value for '--listen'"),
    (["live", "--listen", "::1:80"], "write an IPv6 address in brackets"),
    (["serve", "--listen", "127.0.0.1:0", "--web-config", "/nonexistent.yml"],
     "web config /nonexistent.yml: no such file"),
    (["serve", "--listen", "203.0.113.7:0"], "cannot listen on 203.0.113.7:0: cannot assign requested address"),
    (["serve", "--json"], "coherence serve is headless: --json is for coherence live"),
    (["live", "--web-config", "/etc/web.yml"], "--web-config protects what --listen serves"),
])
def test_exporter_bad_input_is_one_line_and_exit_2(args, message):
    r = cli(*args, "--duration", "1")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("coherence: ") and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


@pytest.mark.parametrize("text, message", [
    ("tls_server_config: [\n", "not valid YAML at line 2"),
    ("basic_auth_users:\n  prometheus: hunter2\n", "basic_auth_users.prometheus: not a bcrypt hash"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
     "tls_server_config.cert_file: "),
])
def test_a_bad_web_config_is_one_line_and_exit_2(tmp_path, text, message):
    path = tmp_path / "web.yml"
    path.write_text(text)
    r = cli("serve", "--listen", "127.0.0.1:0", "--web-config", str(path), "--duration", "1")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"coherence: web config {path}: " + r.stderr.split(": ", 2)[2]
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_the_exporter_settings_are_validated_in_the_file(tmp_path, capsys):
    bad = tmp_path / "c.toml"
    bad.write_text("[exporter]\nlisten = 'nowhere'\n")
    assert run(["serve", "--config", str(bad)]) == 2
    assert capsys.readouterr().err == \
        "coherence: exporter.listen: 'nowhere' is not HOST:PORT with a port from 0 to 65535\n"


def test_serve_is_headless_serves_and_drains_on_sigterm():
    """Nothing on stdout; the log on stderr; /metrics and /healthz answer; on SIGTERM a request
    already in flight is answered in full, then the process exits 0."""
    p = subprocess.Popen(COHERENCE + ["serve", "--listen", "127.0.0.1:0", "--hz", "200"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr is not None
        url = started_url(p.stderr)
        assert url.startswith("http://127.0.0.1:")
        status, body = http_get(url + "/metrics")
        assert status == 200 and 'coherence_sampler_target_hertz 200.0' in body
        deadline = time.monotonic() + 30                      # the first report may be a moment away
        while http_get(url + "/healthz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http_get(url + "/healthz")[0] == 200
        host, port = url[len("http://"):].split(":")
        inflight = socket.create_connection((host, int(port)), timeout=20)
        inflight.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")      # not finished yet
        while "coherence_http_connections 2.0" not in http_get(url + "/metrics")[1]:
            assert time.monotonic() < deadline                       # the server holds it
        p.send_signal(signal.SIGTERM)
        inflight.sendall(b"\r\n")
        answer = b""
        while True:
            chunk = inflight.recv(65536)
            if not chunk:
                break
            answer += chunk
        inflight.close()
        out, err = p.communicate(timeout=20)
    finally:
        p.kill()
    assert answer.startswith(b"HTTP/1.1 200 ") and b"coherence_status" in answer
    assert p.returncode == 0 and out == ""
    assert "SIGTERM: letting the requests in flight finish" in err and err.rstrip().endswith("stopped")
    assert "Traceback" not in err


def test_serve_binds_loopback_on_the_default_port_unless_told():
    from coherence.config import DEFAULT_EXPORTER_PORT
    p = subprocess.Popen(COHERENCE + ["serve", "--hz", "100"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr is not None
        assert started_url(p.stderr) == f"http://127.0.0.1:{DEFAULT_EXPORTER_PORT}"
        assert http_get(f"http://127.0.0.1:{DEFAULT_EXPORTER_PORT}/metrics")[0] == 200
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)
    finally:
        p.kill()
    assert p.returncode == 0


def test_live_json_and_metrics_side_by_side():
    p = subprocess.Popen(COHERENCE + ["live", "--json", "--listen", ":0", "--hz", "200"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr is not None and p.stdout is not None
        url = started_url(p.stderr)
        first = json.loads(p.stdout.readline())               # JSON lines go on
        status, body = http_get(url + "/metrics")
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)
    finally:
        p.kill()
    assert p.returncode == 0 and status == 200
    jsonschema.validate(first, SCHEMA)
    stamp = re.search(r"^coherence_report_timestamp_seconds (\S+)$", body, re.M)
    assert stamp and float(stamp.group(1)) >= first["ts"] - 0.001     # the same reports, later
    assert body.count('coherence_detector_state{detector="seizure"') == 5

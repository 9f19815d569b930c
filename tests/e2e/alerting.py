"""The fleet path for real, on this machine: `coherence serve` sentinels, Debian's Prometheus
scraping them with deploy/prometheus/coherence.rules.yml, Debian's Alertmanager routing with
deploy/prometheus/alertmanager.example.yml, and a webhook receiver in the test process. Every
server binds 127.0.0.1 (the sentinels and the webhook on port 0, the two servers on a port
found free), keeps its data in a temporary directory and is killed on the way out: no systemd,
nothing left running.

The shipped files are used as shipped but for two kinds of value, so that a test lasts about a
minute: every `for:` of the rules divided by FAST, and Alertmanager's timings and receivers' URL.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml

from harness import COHERENCE, kill_group, tmpdir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy", "prometheus")
RULES = os.path.join(DEPLOY, "coherence.rules.yml")
ALERTMANAGER_CONFIG = os.path.join(DEPLOY, "alertmanager.example.yml")
# Every `for:` of the shipped rules divided by this: 1m (critical) -> 5s, 5m (the sentinel's
# health) -> 25s, 10m (warnings) -> 50s. The relations between them stay; only time shrinks.
FAST = 12
# Alertmanager's timings in the test: a group is notified 1 s after its first alert, and again
# 1 s after any change (resolved included); nothing is repeated within a test.
AM_TIMINGS = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"}
SCRAPE = "1s"              # Prometheus scrapes and evaluates every second
START_TIMEOUT_S = 30.0     # for a server to answer as ready
_FOR = re.compile(r"^(\s*for:\s*)(\S+)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def seconds(duration: str) -> float:
    """A Prometheus duration (1m, 1h30m, 500ms) in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * _UNIT_S[u] for n, u in parts)


def fast_rules(text: str, factor: int = FAST) -> str:
    """The rules with every `for:` divided by factor (to whole seconds, at least 1 s); every other
    line as it was."""
    out = []
    for line in text.splitlines(keepends=True):
        m = _FOR.match(line)
        if m:
            line = f"{m.group(1)}{max(1, round(seconds(m.group(2)) / factor))}s\n"
        out.append(line)
    return "".join(out)


def shipped_rules() -> int:
    """How many rules the shipped file has (alerts and records)."""
    with open(RULES) as f:
        return sum(len(g["rules"]) for g in yaml.safe_load(f)["groups"])


def fast_alertmanager(config: Dict[str, Any], webhook: str) -> Dict[str, Any]:
    """The example Alertmanager configuration with its timings shortened and every webhook URL
    pointed at `webhook` (its path kept, so the receiver can be told by it)."""
    route = dict(config["route"], **AM_TIMINGS)
    receivers = []
    for receiver in config["receivers"]:
        hooks = [dict(h, url=webhook + urllib.parse.urlsplit(h["url"]).path)
                 for h in receiver.get("webhook_configs", ())]
        receivers.append(dict(receiver, webhook_configs=hooks))
    return dict(config, route=route, receivers=receivers)


def free_port() -> int:
    """A port of 127.0.0.1 free now (for servers that cannot be given port 0 and say which they
    took); the kernel hands out another ephemeral port next, so a clash is unlikely, and it
    shows as the server failing to start, with its log."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


@dataclass
class Alert:
    """One alert of one notification, as the webhook received it."""

    received: float           # time.time() at receipt
    path: str                 # the receiver's path: /coherence/pager or /coherence/tickets
    status: str               # firing or resolved
    labels: Dict[str, str]
    annotations: Dict[str, str]
    starts_at: str

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")


class Webhook:
    """An HTTP server in the test process that takes Alertmanager's webhook notifications."""

    def __init__(self) -> None:
        self.alerts: List[Alert] = []
        self.notifications = 0
        self._new = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                now = time.time()
                with hook._new:
                    hook.notifications += 1
                    for a in body.get("alerts", ()):
                        hook.alerts.append(Alert(now, self.path, a["status"], a["labels"],
                                                 a.get("annotations", {}), a.get("startsAt", "")))
                    hook._new.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "Webhook":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, predicate: Callable[[List[Alert]], bool], timeout: float) -> bool:
        """Whether predicate(all alerts received so far) held before the deadline."""
        deadline = time.monotonic() + timeout
        with self._new:
            while not predicate(list(self.alerts)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._new.wait(min(left, 0.5))
            return True


class Server:
    """A server in its own process group, its log kept for failure messages; killed (with its
    children) and its directory removed on exit."""

    def __init__(self, name: str, cmd: Sequence[str], ready: str, workdir: str) -> None:
        self.name, self.cmd, self.ready, self.workdir = name, list(cmd), ready, workdir
        self.log_path = os.path.join(workdir, name + ".log")
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Server":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                get(self.ready, timeout=1.0)
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"{self.name} did not start: {self.log()}") from None
                time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        kill_group(self.proc)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-3000:]


class Sentinel(Server):
    """`coherence serve --listen 127.0.0.1:0`: the port it took is read from its first log line."""

    def __init__(self, name: str, workdir: str) -> None:
        super().__init__(name, [COHERENCE, "serve", "--listen", "127.0.0.1:0"], "", workdir)
        self.address = ""

    def __enter__(self) -> "Sentinel":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=log,
                                         cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.address:
            m = re.search(r"serving /metrics and /healthz on http://(\S+) ", self.log())
            if m:
                self.address = m.group(1)
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"{self.name} did not start: {self.log()}")
            else:
                time.sleep(0.1)
        self.ready = f"http://{self.address}/healthz"
        while True:            # 200 once its first report is out
            try:
                get(self.ready, timeout=1.0)
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"{self.name} never healthy: {self.log()}") from None
                time.sleep(0.2)


class Fleet:
    """Sentinels in one job, Prometheus with the (fast) rules, Alertmanager with the example
    configuration (fast), the webhook: started in that order, stopped in the reverse."""

    JOB = "coherence"          # the sentinel's own alerts select job=~"coherence.*"

    def __init__(self, sentinels: int = 2) -> None:
        self.dir = tmpdir()
        self.webhook = Webhook()
        self.sentinels = [Sentinel(f"coherence-{i + 1}", self.dir) for i in range(sentinels)]
        self.servers: List[Server] = []
        self.prometheus = ""

    def __enter__(self) -> "Fleet":
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        self.webhook.__enter__()
        with open(ALERTMANAGER_CONFIG) as f:
            am_config = fast_alertmanager(yaml.safe_load(f), self.webhook.url)
        am_yml = os.path.join(self.dir, "alertmanager.yml")
        with open(am_yml, "w") as f:
            yaml.safe_dump(am_config, f)
        am = f"127.0.0.1:{free_port()}"
        self._up(Server("alertmanager", [
            "prometheus-alertmanager", f"--config.file={am_yml}",
            f"--storage.path={os.path.join(self.dir, 'alertmanager-data')}",
            f"--web.listen-address={am}", "--cluster.listen-address=", "--log.level=warn"],
            f"http://{am}/-/ready", self.dir))
        for sentinel in self.sentinels:
            self._up(sentinel)
        rules = os.path.join(self.dir, "coherence.rules.yml")
        with open(RULES) as f, open(rules, "w") as out:
            out.write(fast_rules(f.read()))
        config = {
            "global": {"scrape_interval": SCRAPE, "scrape_timeout": SCRAPE,
                       "evaluation_interval": SCRAPE},
            "rule_files": [rules],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [am]}]}]},
            "scrape_configs": [{"job_name": self.JOB, "static_configs": [
                {"targets": [s.address for s in self.sentinels]}]}],
        }
        prom_yml = os.path.join(self.dir, "prometheus.yml")
        with open(prom_yml, "w") as f:
            yaml.safe_dump(config, f)
        prom = f"127.0.0.1:{free_port()}"
        self._up(Server("prometheus", [
            "prometheus", f"--config.file={prom_yml}",
            f"--storage.tsdb.path={os.path.join(self.dir, 'prometheus-data')}",
            f"--web.listen-address={prom}", "--log.level=warn"],
            f"http://{prom}/-/ready", self.dir))
        self.prometheus = f"http://{prom}"

    def _up(self, server: Server) -> None:
        server.__enter__()
        self.servers.append(server)

    def __exit__(self, *exc: object) -> None:
        for server in reversed(self.servers):
            server.__exit__()
        self.webhook.__exit__()
        shutil.rmtree(self.dir, ignore_errors=True)

    def query(self, promql: str) -> List[Dict[str, Any]]:
        """An instant query's result (one dict per series: "metric", "value")."""
        answer = get(f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def wait_query(self, promql: str, predicate: Callable[[List[Dict[str, Any]]], bool],
                   timeout: float) -> bool:
        """Whether predicate(result) held, the query asked every 0.5 s, before the deadline."""
        deadline = time.monotonic() + timeout
        while not predicate(self.query(promql)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def rule_health(self) -> List[str]:
        """Rules whose last evaluation failed, with the error: empty when all are healthy."""
        groups = get(f"{self.prometheus}/api/v1/rules")["data"]["groups"]
        return [f"{r['name']}: {r.get('lastError')}" for g in groups for r in g["rules"]
                if r.get("health") != "ok"]

    def rules_loaded(self) -> int:
        groups = get(f"{self.prometheus}/api/v1/rules")["data"]["groups"]
        return sum(len(g["rules"]) for g in groups)

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}:\n{s.log()}" for s in self.servers)

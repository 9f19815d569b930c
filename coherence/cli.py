"""The `coherence` command line: the live sentinel (dashboard or JSON lines), `check` for
Nagios-style monitoring, `sources`, and `--simulate`. Bad input of any kind ends in one line
on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import click

from coherence import __version__
from coherence.config import Config, ConfigError, load
from coherence.sources import Row, cpu_capacity, describe

EVAL_PERIOD_S = 0.25        # detectors judge 4 times a second; sinks decide what to show
CHECK_MARGIN_S = 2.0        # check samples warm-up (half a window) + `for` + this, 12 s by default
EXIT_USAGE = 2
EXIT_UNKNOWN = 3            # Nagios: UNKNOWN, bad arguments included
_IN_CHECK = False           # set once `check` runs: its errors exit UNKNOWN


class Stop(Exception):
    """SIGTERM: leave like Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Stop()


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM raises Stop inside the block (and is restored after it)."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _table(rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def _hostport(value: Optional[str]) -> Optional[Tuple[str, int]]:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT with a port from 1 to 65535",
                                 param_hint="'--statsd'")
    return host, int(port)


def _seconds(ctx: click.Context, param: click.Parameter, value: Optional[float]) -> Optional[float]:
    """A finite, positive number of seconds (click's FloatRange lets nan and inf through)."""
    if value is not None and not (0 < value < 1e9):
        raise click.BadParameter(f"{value!r} is not a positive, finite number of seconds")
    return value


def _given(ctx: click.Context, *names: str) -> List[str]:
    """The options among `names` that the user typed (not defaults)."""
    source = click.core.ParameterSource.COMMANDLINE
    return ["--" + n.replace("_", "-") for n in names if ctx.get_parameter_source(n) == source]


def _config(config_file: Optional[str], overrides: Dict[str, Any]) -> Config:
    return load(config_file).with_overrides(overrides)


# Options shared by the live sentinel and `check`: (flag, config key, type, help); the help's
# [default: ...] comes from Config, the one place defaults live.
LIMIT_OPTIONS = [
    ("--hz", "sampler.hz", click.FloatRange(1, 2000),
     "CPU samples per second, 1-2000."),
    ("--resolution", "seizure.resolution_s", click.FloatRange(min=0, min_open=True),
     "CPU bucket in seconds: the timescale of a seizure."),
    ("--window", "seizure.window_s", click.FloatRange(min=0, min_open=True),
     "Seconds of buckets the CPU std is taken over."),
    ("--seizure-std", "seizure.std_limit_pct", click.FloatRange(min=0, max=100, min_open=True),
     "Seizure when the CPU std exceeds this many points of %."),
    ("--seizure-mean-ceiling", "seizure.mean_ceiling_pct", click.FloatRange(min=0, max=100, min_open=True),
     "... and the mean is under this %."),
    ("--fever-churn", "fever.churn_limit_mb_s", click.FloatRange(min=0, min_open=True),
     "Fever when allocation churn exceeds this many MB/s."),
    ("--fever-horizon", "fever.horizon_h", click.FloatRange(min=0, min_open=True),
     "Warn when memory runs out sooner than this many hours."),
    ("--amplification-ratio", "amplification.ratio_limit", click.FloatRange(min=1),
     "Amplification when egress/ingress exceeds this and its learned baseline."),
    ("--min-ingress", "amplification.min_ingress_per_s", click.FloatRange(min=0, min_open=True),
     "Ignore amplification under this many requests/s in."),
    ("--for", "verdict.for_s", click.FloatRange(min=0, min_open=True),
     "Seconds a condition must hold to be CRITICAL."),
    ("--clear", "verdict.clear_s", click.FloatRange(min=0, min_open=True),
     "Seconds a condition must be gone to be OK again."),
]


def limit_options(f: Callable[..., Any]) -> Callable[..., Any]:
    defaults = Config()
    for flag, key, typ, help_ in reversed(LIMIT_OPTIONS):
        section, _, name = key.partition(".")
        default = getattr(getattr(defaults, section), name)
        f = click.option(flag, key.replace(".", "__"), type=typ, default=None,
                         help=f"{help_} [default: {default:g}]")(f)
    f = click.option("--config", "config_file", type=click.Path(dir_okay=True),
                     help="A TOML file of settings (see README); flags override it.")(f)
    f = click.option("--pid", type=click.IntRange(min=1), help="Watch one process instead of the host/container.")(f)
    f = click.option("--statsd", metavar="HOST:PORT",
                     help="Listen for StatsD counters <prefix>.ingress/.egress (e.g. 127.0.0.1:8125).")(f)
    f = click.option("--statsd-prefix", default="coherence", show_default=True,
                     help="Prefix of the StatsD counters.")(f)
    return f


def _overrides(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    return {key: kwargs.pop(key.replace(".", "__")) for _, key, _, _ in LIMIT_OPTIONS}


class Sentinel:
    """The sampler, an optional StatsD listener and the monitor, started and stopped together."""

    def __init__(self, config: Config, pid: Optional[int], statsd: Optional[Tuple[str, int]],
                 statsd_prefix: str) -> None:
        from coherence.monitor import Monitor, sampler_figures
        from coherence.sampler import Sampler
        self.listener = None
        if statsd is not None:
            from coherence.statsd import StatsdListener
            self.listener = StatsdListener(host=statsd[0], port=statsd[1], prefix=statsd_prefix)
        try:
            self.sampler = Sampler.from_config(config, pid=pid)
        except BaseException:
            if self.listener is not None:
                self.listener.stop()
            raise
        self.monitor = Monitor(config, self.sampler.snapshot, lambda: sampler_figures(self.sampler))

    def __enter__(self) -> "Sentinel":
        if self.listener is not None:
            self.listener.start()
        self.sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sampler.stop()
        if self.listener is not None:
            self.listener.stop()

    def run(self, duration: Optional[float], on_report: Callable[[Any], None]) -> Any:
        """Judge every EVAL_PERIOD_S until `duration` (None: forever); the last report."""
        start = time.monotonic()
        report = None
        next_step = start
        while True:
            now = time.monotonic()
            report = self.monitor.step(now, time.time())
            on_report(report)
            if duration is not None and now - start >= duration:
                return report
            next_step += EVAL_PERIOD_S
            end = start + duration if duration is not None else next_step
            time.sleep(max(0.0, min(next_step, end) - time.monotonic()))


def _fail(message: str, code: int) -> None:
    click.echo(f"coherence: {message}", err=True)
    sys.exit(code)


def _sink(as_json: bool, config: Config) -> Any:
    from coherence.sinks.jsonl import JsonLinesSink
    if as_json:
        return JsonLinesSink(sys.stdout, interval_s=config.output.report_interval_s)
    if sys.stdout.isatty():
        from coherence.sinks.dashboard import Dashboard
        return Dashboard(refresh_hz=config.output.refresh_hz)
    from coherence.sinks.dashboard import PlainStatusSink
    return PlainStatusSink(sys.stdout, interval_s=config.output.report_interval_s)


@contextlib.contextmanager
def _opened(sink: Any) -> Iterator[Callable[[Any], Any]]:
    """The sink's report callback, inside its context when it has one (the dashboard's Live)."""
    emit = sink.emit if hasattr(sink, "emit") else sink.update
    with sink if hasattr(sink, "__enter__") else contextlib.nullcontext():
        yield emit


# ---------------------------------------------------------------------------------- commands
@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="coherence")
@click.option("--live", is_flag=True, help="Watch this host now: the live dashboard (JSON lines with --json).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per report interval and per state change, on stdout.")
@click.option("--duration", type=float, callback=_seconds, metavar="SECONDS",
              help="Stop after this long and exit 0 (default: until Ctrl-C).")
@click.option("--simulate", is_flag=True, help="The demo: a scripted incident timeline through the same engine.")
@click.option("--scenario", default="story", show_default=True, metavar="NAME",
              help="Simulation scenario: story, healthy, seizure, fever, storm, cascade, leak.")
@click.option("--seed", type=int, default=0, show_default=True, help="Simulation seed (deterministic).")
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Simulation speed-up over real time (default: the story in under a minute).")
@limit_options
@click.pass_context
def main(ctx: click.Context, live: bool, as_json: bool, duration: Optional[float], simulate: bool,
         scenario: str, seed: int, speed: Optional[float], pid: Optional[int],
         config_file: Optional[str], statsd: Optional[str], statsd_prefix: str, **limits: Any) -> None:
    """coherence: a read-only sentinel that watches the variance of a host, not its averages.

    \b
    coherence --live                 the live dashboard
    coherence --live --json          JSON lines (one per second and per state change)
    coherence check                  a Nagios/Icinga/Sensu check: exit 0/1/2/3
    coherence sources                what is read on this host, and why
    coherence --simulate             the demo: seizure, fever, retry storm, cascade
    """
    every = [p.name for p in ctx.command.params if p.name and p.name not in ("help", "version")]
    if ctx.invoked_subcommand is not None:
        if _given(ctx, *every):
            raise click.UsageError(f"options go after the command: coherence "
                                   f"{ctx.invoked_subcommand} [OPTIONS]")
        return
    if live and simulate:
        raise click.UsageError("--live and --simulate are exclusive: pick one")
    if simulate:
        stray = _given(ctx, "duration", "pid", "statsd", "statsd_prefix")
        if stray:
            raise click.UsageError(f"--simulate replays a script: {', '.join(stray)} "
                                   "are for --live")
    elif live:
        stray = _given(ctx, "scenario", "seed", "speed")
        if stray:
            raise click.UsageError(f"{', '.join(stray)} are for --simulate")
    elif _given(ctx, *every):
        raise click.UsageError("say what to do: --live (watch this host) or --simulate "
                               "(the demo); see --help")
    config = _config(config_file, _overrides(limits))
    if simulate:
        _simulate(config, scenario, seed, speed, as_json)
        return
    if not live:
        click.echo(ctx.get_help())
        return
    _live(config, pid, _hostport(statsd), statsd_prefix, duration, as_json)


def _live(config: Config, pid: Optional[int], statsd: Optional[Tuple[str, int]], prefix: str,
          duration: Optional[float], as_json: bool) -> None:
    from coherence.sinks.jsonl import SinkClosed
    sentinel = Sentinel(config, pid, statsd, prefix)
    try:
        with _sigterm_stops(), sentinel, _opened(_sink(as_json, config)) as emit:
            sentinel.run(duration, emit)
    except (KeyboardInterrupt, Stop, SinkClosed):
        pass


def _simulate(config: Config, scenario: str, seed: int, speed: Optional[float], as_json: bool) -> None:
    from coherence import simulate
    from coherence.sinks.jsonl import SinkClosed
    if scenario not in simulate.SCENARIOS:
        raise click.BadParameter(f"{scenario!r}: choose from {', '.join(simulate.SCENARIOS)}",
                                 param_hint="'--scenario'")
    try:
        with _sigterm_stops(), _opened(_sink(as_json, config)) as emit:
            result = simulate.run(config, scenario=scenario, seed=seed, speed=speed, on_report=emit)
    except (KeyboardInterrupt, Stop, SinkClosed):
        return
    if sys.stdout.isatty() and not as_json:
        from rich.console import Console
        Console().print(simulate.result_table(result))
    else:
        click.echo(simulate.format_result(result), err=as_json)


@main.command()
@click.option("--duration", type=float, callback=_seconds, metavar="SECONDS",
              help="Sample this long, then judge [default: the warm-up (half of --window) + "
                   "--for + 2 s, 12 s with the defaults]. CRITICAL needs the condition held "
                   "for --for.")
@limit_options
def check(duration: Optional[float], pid: Optional[int], config_file: Optional[str],
          statsd: Optional[str], statsd_prefix: str, **limits: Any) -> None:
    """Sample for a while, print one status line with perfdata, exit 0 OK / 1 WARNING /
    2 CRITICAL / 3 UNKNOWN (Nagios plugin convention; bad arguments are UNKNOWN too)."""
    global _IN_CHECK
    _IN_CHECK = True
    config = _config(config_file, _overrides(limits))
    if duration is None:
        duration = config.seizure.window_s / 2 + config.verdict.for_s + CHECK_MARGIN_S
    sentinel = Sentinel(config, pid, _hostport(statsd), statsd_prefix)
    try:
        with _sigterm_stops(), sentinel:
            report = sentinel.run(duration, lambda r: None)
    except (KeyboardInterrupt, Stop):
        _fail("check interrupted", EXIT_UNKNOWN)
        return
    click.echo(check_line(report, config))
    sys.exit(report.verdict.exit_code)


def _fmt(x: Any, spec: str = ".1f") -> str:
    """A perfdata number; U (undetermined, the plugin convention) when there is none."""
    return "U" if x is None or x != x else format(x, spec)


def check_line(report: Any, config: Optional[Config] = None) -> str:
    """`COHERENCE <STATUS> - <reasons> | <perfdata>` (Nagios plugin output)."""
    verdict, findings = report.verdict, report.findings
    status = {"WARMUP": "UNKNOWN", "UNAVAILABLE": "UNKNOWN"}.get(verdict.status, verdict.status)
    parts = [f"{name} {verdict.states[name]}: {f.reason}" for name, f in findings.items()]
    seizure, fever, amp = findings["seizure"], findings["fever"], findings["amplification"]
    sampler = report.sampler or {}
    perf = [
        f"seizure_cpu_std_pct={_fmt(seizure.value)};{seizure.limit:g};;0;100",
        f"seizure_cpu_mean_pct={_fmt(seizure.evidence.get('mean_pct'))};;;0;100",
        f"fever_alloc_mb_s={_fmt(fever.evidence.get('alloc_rate_mb_s'))};"
        f"{(config or Config()).fever.churn_limit_mb_s:g};;0;",
        f"fever_resident_mb={_fmt(fever.evidence.get('resident_mb'), '.0f')};;;0;",
        f"amplification_ratio={_fmt(amp.value, '.3f')};{amp.limit:g};;0;",
        f"sampler_hz={_fmt(sampler.get('achieved_hz'))};;;0;",
        f"sampler_p99_lateness_us={_fmt(sampler.get('tick_lateness_p99_us'), '.0f')};;;0;",
        f"sampler_cpu_pct={_fmt(sampler.get('cpu_percent'), '.2f')};;;0;100",
    ]
    return f"COHERENCE {status} - {'; '.join(parts)} | {' '.join(perf)}"


@main.command()
@click.option("--pid", type=click.IntRange(min=1), help="Watch one process instead of the host/container.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per source, one per line.")
def sources(pid: Optional[int], as_json: bool) -> None:
    """Which counters this host offers, which are in use, and why the others are not.

    Per family (cpu, memory, pressure, requests) the candidates are listed in preference
    order; the first available one is used.
    """
    if pid is not None and not os.path.isdir(f"/proc/{pid}"):
        raise click.BadParameter(f"no process {pid}", param_hint="'--pid'")
    rows: List[Row] = describe(pid=pid)
    ncpu, why = cpu_capacity(pid=pid)
    if as_json:
        for r in rows:
            click.echo(json.dumps(r._asdict()))
        click.echo(json.dumps({"cpus": ncpu, "cpus_reason": why}))
        return
    table = [("FAMILY", "SOURCE", "STATE", "MAX HZ", "WHAT / WHY NOT")]
    for r in rows:
        state = "in use" if r.in_use else ("available" if r.available else "unavailable")
        table.append((r.family, r.name, state, f"{r.max_hz:g}", r.reason))
    for line in _table(table):
        click.echo(line)
    click.echo(f"\nCPU utilization is normalized to {ncpu:g} CPUs: {why}.")
    click.echo("Requests: push counters with --statsd or coherence.hooks; the TCP proxy is used "
               "while nothing is pushed.")


def run(argv: Optional[List[str]] = None) -> int:
    """The console entry point: click without its multi-line errors and tracebacks."""
    from coherence.sampler import SamplerError
    from coherence.statsd import StatsdError
    args = sys.argv[1:] if argv is None else argv
    def bad(err: BaseException) -> int:
        # check's own arguments, or an error inside check, are UNKNOWN (3); all others 2
        ctx = getattr(err, "ctx", None)
        return EXIT_UNKNOWN if (ctx is not None and ctx.info_name == "check") or _IN_CHECK \
            else EXIT_USAGE
    try:
        main.main(args=args, prog_name="coherence", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        return 130
    except click.ClickException as e:
        click.echo(f"coherence: {e.format_message()}", err=True)
        return bad(e)
    except (ConfigError, SamplerError, StatsdError, ValueError) as e:
        click.echo(f"coherence: {e}", err=True)
        return bad(e)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    except OSError as e:
        click.echo(f"coherence: {e.strerror or e}", err=True)
        return bad(e)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())

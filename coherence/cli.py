"""The `coherence` command line: it parses options and chooses what runs and where the reports go;
the Sentinel (coherence.sentinel) runs, the sinks (coherence.sinks) write. Subcommands `live`,
`serve`, `simulate`, `check` and `sources`; `--live` and `--simulate` are aliases of the first two. Bad
input of any kind ends in one line on stderr and exit 2 (3, UNKNOWN, for `check`), never a
traceback."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import click

from coherence import __version__
from coherence.config import (DEFAULT_EXPORTER_HOST, DEFAULT_EXPORTER_PORT, Config, ConfigError, load,
                              parse_listen)
from coherence.sinks.base import Sink, SinkClosed, SinkFailed

CHECK_MARGIN_S = 2.0        # check samples warm-up (half a window) + `for` + this, 12 s by default
EXIT_USAGE = 2
EXIT_UNKNOWN = 3            # Nagios: UNKNOWN, bad arguments included
# `coherence --live ...` is `coherence live ...`; likewise --simulate.
ALIASES = {"--live": "live", "--simulate": "simulate"}
_ALIAS_USED = "coherence.alias"     # ctx.meta key: the alias flag the user typed, if any
_GROUP_HELP = ("-h", "--help")


# ---------------------------------------------------------------------------------- option types
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


class ProcessId(click.ParamType):
    """A process id: a whole number from 1 (click's IntRange answers "not a valid integer range")."""

    name = "pid"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            text = str(value).strip()
            if not text.isdigit():
                self.fail(f"{value!r} is not a process id (a whole number from 1)", param, ctx)
            number = int(text)
        if number < 1:
            self.fail(f"{value!r} is not a process id (a whole number from 1)", param, ctx)
        return number


PID = ProcessId()


def _seconds(ctx: click.Context, param: click.Parameter, value: Optional[float]) -> Optional[float]:
    """A finite, positive number of seconds (click's FloatRange lets nan and inf through)."""
    if value is not None and not (0 < value < 1e9):
        raise click.BadParameter(f"{value!r} is not a positive, finite number of seconds")
    return value


def _scenario(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from coherence.simulate import SCENARIOS
    if value not in SCENARIOS:
        raise click.BadParameter(f"{value!r}: choose from {', '.join(SCENARIOS)}")
    return value


# Options shared by the commands that judge (live, simulate, check): (flag, config key, type,
# help); the help's [default: ...] comes from Config, the one place defaults live.
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
     "Warn when memory runs out sooner than this many hours (forecast from growth "
     "over at least 1/12 of it)."),
    ("--amplification-ratio", "amplification.ratio_limit", click.FloatRange(min=1),
     "Amplification when egress/ingress exceeds this and its learned baseline."),
    ("--min-ingress", "amplification.min_ingress_per_s", click.FloatRange(min=0, min_open=True),
     "Ignore amplification under this many requests/s in."),
    ("--for", "verdict.for_s", click.FloatRange(min=0, min_open=True),
     "Seconds a condition must hold to be CRITICAL."),
    ("--clear", "verdict.clear_s", click.FloatRange(min=0, min_open=True),
     "Seconds a condition must be gone to be OK again."),
]

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _options(*decorators: Decorator) -> Decorator:
    """Several click options as one decorator, listed in --help in the order given."""
    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


def limit_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--config and the limits, each --help default read from Config."""
    defaults = Config()
    for flag, key, typ, help_ in reversed(LIMIT_OPTIONS):
        section, _, name = key.partition(".")
        default = getattr(getattr(defaults, section), name)
        f = click.option(flag, key.replace(".", "__"), type=typ, default=None,
                         help=f"{help_} [default: {default:g}]")(f)
    return click.option("--config", "config_file", type=click.Path(dir_okay=True),
                        help="A TOML file of settings (see README); flags override it.")(f)


json_option = click.option("--json", "as_json", is_flag=True,
                           help="One JSON object per report interval and per state change, on stdout.")
# Runtime counters (the settings file's [runtime]): (flag, config key, help)
RUNTIME_OPTIONS = [
    ("--ingress-metric", "runtime.ingress_metric",
     'Requests in, from scraped targets, where the known names do not fit: name{label="v"}.'),
    ("--egress-metric", "runtime.egress_metric", "Calls out (retries included), likewise."),
    ("--alloc-metric", "runtime.alloc_metric", "Bytes allocated, likewise."),
]

watch_options = _options(
    click.option("--scrape", "runtime__scrape", metavar="URL", multiple=True,
                 help="Also read a service's /metrics (Go client, Micrometer, OpenTelemetry, Envoy, "
                      "gRPC names): GC time, allocation, requests in and out. Repeatable."),
    *(click.option(flag, key.replace(".", "__"), metavar="SELECTOR", help=help_)
      for flag, key, help_ in RUNTIME_OPTIONS),
    click.option("--statsd-prefix", default="coherence", show_default=True,
                 help="Prefix of the StatsD counters."),
    click.option("--statsd", metavar="HOST:PORT",
                 help="Listen for StatsD counters <prefix>.ingress/.egress (e.g. 127.0.0.1:8125)."),
    click.option("--pid", type=PID, help="Watch one process instead of the host/container."),
)


def _listen(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[str]:
    if value is not None:
        try:
            parse_listen(value)
        except ValueError as err:
            raise click.BadParameter(str(err)) from None
    return value


# The exporter (the settings file's [exporter]): /metrics and /healthz over HTTP.
exporter_options = _options(
    click.option("--listen", "exporter__listen", metavar="HOST:PORT", callback=_listen,
                 help="Serve Prometheus /metrics and /healthz here (serve's default: "
                      f"{DEFAULT_EXPORTER_HOST}:{DEFAULT_EXPORTER_PORT}). A bare :PORT is "
                      f"{DEFAULT_EXPORTER_HOST}, not every interface: say 0.0.0.0:PORT or [::]:PORT."),
    click.option("--web-config", "exporter__web_config", metavar="FILE",
                 help="TLS and basic auth for --listen: a Prometheus exporter-toolkit web config "
                      "(the file node_exporter's --web.config.file takes)."),
)
EXPORTER_KEYS = ("exporter.listen", "exporter.web_config")


def _config(config_file: Optional[str], limits: Dict[str, Any]) -> Config:
    """Defaults, then the file, then the flags given (the limit options' values)."""
    overrides = {key: limits.pop(key.replace(".", "__"), None) for _, key, _, _ in LIMIT_OPTIONS}
    for key in [*EXPORTER_KEYS, "runtime.scrape", *(key for _, key, _ in RUNTIME_OPTIONS)]:
        value = limits.pop(key.replace(".", "__"), None)
        overrides[key] = value or None           # not given: the file's or the default
    return load(config_file).with_overrides(overrides)


# ---------------------------------------------------------------------------------- click classes
def _opts(command: click.Command) -> Dict[str, click.Parameter]:
    return {opt: p for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def _takes_value(param: Optional[click.Parameter]) -> bool:
    return isinstance(param, click.Option) and not param.is_flag and not param.count


class Command(click.Command):
    """A subcommand whose bad input exits ``usage_exit_code``, and which, given an option of a
    sibling command, says whose it is (`--seed are for --simulate`) instead of "no such
    option"."""

    def __init__(self, *args: Any, usage_exit_code: int = EXIT_USAGE,
                 stray: str = "{options} {verb} for {home}", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usage_exit_code = usage_exit_code
        self.stray = stray

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        given = list(args)          # click's parser consumes the list it is given
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as err:
            group = ctx.parent.command if ctx.parent is not None else None
            if not isinstance(group, click.Group):
                raise
            mine = _opts(self)
            siblings = [c for n, c in group.commands.items() if c is not self]
            home = next((c for c in siblings if err.option_name in _opts(c)), None)
            if home is None:
                raise
            stray = list(dict.fromkeys(
                a.split("=", 1)[0] for a in given
                if a.split("=", 1)[0] not in mine and any(a.split("=", 1)[0] in _opts(c) for c in siblings)))
            raise click.UsageError(self.stray.format(
                options=", ".join(stray), verb="is" if len(stray) == 1 else "are",
                me=_spelling(ctx, self.name), home=_spelling(ctx, home.name)), ctx) from None


def _spelling(ctx: click.Context, name: Optional[str]) -> str:
    """A command as the user would type it here: `--live` if they used the alias, else
    `coherence live`."""
    if ctx.meta.get(_ALIAS_USED):
        alias = next((flag for flag, n in ALIASES.items() if n == name), None)
        if alias is not None:
            return alias
    return f"coherence {name}"


class Coherence(click.Group):
    """The `coherence` group: `--live` and `--simulate` before any command become the `live` and
    `simulate` subcommands; options before a subcommand are refused with where they go."""

    def _known(self) -> Dict[str, click.Parameter]:
        """Every option of every subcommand."""
        known: Dict[str, click.Parameter] = {}
        for command in self.commands.values():
            known.update(_opts(command))
        return known

    def _options_in(self, args: Sequence[str]) -> List[str]:
        """The option names among ``args`` (not their values, nor `--opt=value`'s value)."""
        known, names, i = self._known(), [], 0
        while i < len(args):
            name = args[i].split("=", 1)[0]
            if name.startswith("-"):
                names.append(name)
            i += 2 if "=" not in args[i] and _takes_value(known.get(name)) else 1
        return names

    def split(self, args: Sequence[str]) -> Tuple[List[str], Optional[str], List[str]]:
        """(the arguments before the subcommand, its name, the arguments after it); an option's
        value is never taken for a subcommand (`--scenario check`)."""
        known = self._known()
        i = 0
        while i < len(args):
            a = args[i]
            if a == "--":
                break
            if a in self.commands:
                return list(args[:i]), a, list(args[i + 1:])
            i += 2 if "=" not in a and _takes_value(known.get(a)) else 1
        return list(args), None, []

    def command_name(self, args: Sequence[str]) -> Optional[str]:
        """The subcommand these arguments run (an alias resolved), or None."""
        before, name, _ = self.split(args)
        if name is None:
            name = next((ALIASES[a] for a in before if a in ALIASES), None)
        return name

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        before, name, _ = self.split(args)
        modes = list(dict.fromkeys(a for a in before if a in ALIASES))
        if "--version" in before or (name is None and not modes and
                                     any(a in _GROUP_HELP for a in before)):
            return super().parse_args(ctx, args)
        if name is not None:
            if before:
                raise click.UsageError(f"options go after the command: coherence {name} [OPTIONS]", ctx)
            return super().parse_args(ctx, args)
        if len(modes) > 1:
            raise click.UsageError("--live and --simulate are exclusive: pick one", ctx)
        if modes:       # `coherence --live ARGS` is `coherence live ARGS`, --help included
            ctx.meta[_ALIAS_USED] = modes[0]
            return super().parse_args(ctx, [ALIASES[modes[0]]] + [a for a in args if a not in ALIASES])
        options = self._options_in(before)
        if options:
            known = self._known()
            unknown = [o for o in options if o not in known]
            if unknown:
                raise click.NoSuchOption(unknown[0], ctx=ctx)
            raise click.UsageError("say what to do: --live (watch this host) or --simulate "
                                   "(the demo); see --help", ctx)
        return super().parse_args(ctx, args)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_options(ctx, formatter)
        shown: Set[str] = set()
        for name in ALIASES.values():
            command = self.commands[name]
            own_help = command.get_help_option(ctx)
            rows = [r for p in command.get_params(ctx)
                    if p is not own_help and (r := p.get_help_record(ctx)) is not None
                    and r[0] not in shown]
            shown.update(r[0] for r in rows)
            alias = next(flag for flag, n in ALIASES.items() if n == name)
            with formatter.section(f"Options of `coherence {name}` and `coherence {alias}`"
                                   + (" (not shown above)" if name != "live" else "")):
                formatter.write_dl(rows)


# ---------------------------------------------------------------------------------- commands
@click.group(cls=Coherence, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="coherence")
@click.option("--live", is_flag=True, expose_value=False,
              help="Alias of `coherence live`: watch this host now.")
@click.option("--simulate", is_flag=True, expose_value=False,
              help="Alias of `coherence simulate`: the demo.")
@click.pass_context
def main(ctx: click.Context) -> None:
    """coherence: a read-only sentinel that watches the variance of a host, not its averages.

    \b
    coherence --live                 the live dashboard (coherence live)
    coherence --live --json          JSON lines (one per second and per state change)
    coherence check                  a Nagios/Icinga/Sensu check: exit 0/1/2/3
    coherence sources                what is read on this host, and why
    coherence serve                  headless: Prometheus /metrics and /healthz on 127.0.0.1:21950
    coherence --simulate             the demo: seizure, fever, retry storm, cascade
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _screen(as_json: bool, config: Config) -> Sink:
    """Where live and simulated reports go: JSON lines if asked, else the dashboard on a
    terminal and plain status lines on anything else."""
    if as_json:
        from coherence.sinks.jsonl import JsonLinesSink
        return JsonLinesSink.from_config(config, sys.stdout)
    if sys.stdout is not None and sys.stdout.isatty():
        from coherence.sinks.dashboard import Dashboard
        return Dashboard.from_config(config)
    from coherence.sinks.plain import PlainStatusSink
    return PlainStatusSink.from_config(config, sys.stdout)


@contextlib.contextmanager
def _until_stopped() -> Iterator[None]:
    """Ctrl-C, SIGTERM and a reader that went away end the block quietly."""
    from coherence.sentinel import Stop, stop_signals
    try:
        with stop_signals():
            yield
    except (KeyboardInterrupt, Stop, SinkClosed):
        pass


def _watching(config: Config, sinks: List[Sink], *, pid: Optional[int], statsd: Optional[str],
              statsd_prefix: str, serve: bool = False) -> Any:
    """The Sentinel, with the exporter first among its sinks when [exporter] listen is set (or
    always, for `serve`): it binds before anything starts and serves before the screen opens."""
    from coherence import hooks
    from coherence.sentinel import Sentinel
    exporter = None
    if config.exporter.web_config and not (config.exporter.listen or serve):
        raise click.UsageError("--web-config protects what --listen serves: give --listen too")
    if config.exporter.listen or serve:
        from coherence.sinks.prometheus import PrometheusSink
        listen = parse_listen(config.exporter.listen) if config.exporter.listen \
            else (DEFAULT_EXPORTER_HOST, DEFAULT_EXPORTER_PORT)
        exporter = PrometheusSink.from_config(config, listen)
        sinks = [exporter, *sinks]
    try:
        sentinel = Sentinel.from_config(config, pid=pid, statsd=_hostport(statsd),
                                        statsd_prefix=statsd_prefix, sinks=sinks)
    except BaseException:
        if exporter is not None:
            exporter.server.stop()
        raise
    if exporter is not None:
        exporter.watch(sentinel.sampler, sentinel.listener, sentinel.runtime,
                       counters=(hooks.INGRESS, hooks.EGRESS))
    return sentinel, exporter


@main.command(cls=Command, stray="{options} {verb} for {home}")
@json_option
@click.option("--duration", type=float, callback=_seconds, metavar="SECONDS",
              help="Stop after this long and exit 0 (default: until Ctrl-C).")
@exporter_options
@watch_options
@limit_options
def live(as_json: bool, duration: Optional[float], pid: Optional[int], statsd: Optional[str],
         statsd_prefix: str, config_file: Optional[str], **limits: Any) -> None:
    """Watch this host now: the live dashboard on a terminal, plain status lines on a pipe,
    JSON lines with --json (alias: coherence --live); Prometheus /metrics beside with --listen."""
    config = _config(config_file, limits)
    sentinel, exporter = _watching(config, [_screen(as_json, config)], pid=pid, statsd=statsd,
                                   statsd_prefix=statsd_prefix)
    if exporter is not None:        # before the dashboard takes the screen
        click.echo(f"coherence: serving /metrics and /healthz on {exporter.url} "
                   f"({exporter.security()})", err=True)
        exposed = exporter.exposed_without_protection()
        if exposed:
            click.echo(f"coherence: warning: {exposed}", err=True)
    with _until_stopped(), sentinel:
        sentinel.run(duration)


@main.command(cls=Command, stray="{me} is headless: {options} {verb} for {home}")
@click.option("--duration", type=float, callback=_seconds, metavar="SECONDS",
              help="Stop after this long and exit 0 (default: until SIGTERM or Ctrl-C).")
@exporter_options
@watch_options
@limit_options
def serve(duration: Optional[float], pid: Optional[int], statsd: Optional[str],
          statsd_prefix: str, config_file: Optional[str], **limits: Any) -> None:
    """Headless, for a service manager: Prometheus /metrics and /healthz on --listen (default
    127.0.0.1:21950), nothing on stdout, a log of start, state changes and stop on stderr.
    SIGTERM stops serving, lets the scrapes in flight finish, and exits 0."""
    from coherence.sentinel import Stop
    from coherence.sinks.log import StateLog, configure_logging
    log = configure_logging()
    config = _config(config_file, limits)
    sentinel, exporter = _watching(config, [StateLog()], pid=pid, statsd=statsd,
                                   statsd_prefix=statsd_prefix, serve=True)
    with _until_stopped(), sentinel:
        log.info("serving /metrics and /healthz on %s (%s); sampling at %g Hz; sources: %s",
                 exporter.url, exporter.security(), sentinel.sampler.hz,
                 ", ".join(f"{r.family}={r.name}" for r in sentinel.sampler.sources() if r.in_use))
        exposed = exporter.exposed_without_protection()
        if exposed:
            log.warning(exposed)
        try:
            sentinel.run(duration)
        except (Stop, KeyboardInterrupt) as stop:
            log.info("%s: letting the requests in flight finish, then stopping",
                     "SIGTERM" if isinstance(stop, Stop) else "interrupted")
            raise
    log.info("stopped")


@main.command(cls=Command, stray="{me} replays a script: {options} {verb} for {home}")
@json_option
@click.option("--scenario", default="story", show_default=True, metavar="NAME", callback=_scenario,
              help="Simulation scenario: story, healthy, seizure, fever, storm, cascade, leak.")
@click.option("--seed", type=int, default=0, show_default=True, help="Simulation seed (deterministic).")
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Simulation speed-up over real time (default: the story in under a minute).")
@limit_options
def simulate(as_json: bool, scenario: str, seed: int, speed: Optional[float],
             config_file: Optional[str], **limits: Any) -> None:
    """The demo: a scripted incident timeline through the same engine, then when coherence and
    the classic alerts called each incident (alias: coherence --simulate)."""
    from coherence import simulate as simulator
    from coherence.sinks import simulation
    from coherence.sinks.base import opened
    config = _config(config_file, limits)
    result = None
    with _until_stopped(), opened([_screen(as_json, config)]) as emit:
        result = simulator.run(config, scenario=scenario, seed=seed, speed=speed, on_report=emit)
    if result is None:
        return
    if sys.stdout.isatty() and not as_json:
        from rich.console import Console
        Console().print(simulation.result_table(result))
    else:
        click.echo(simulation.format_result(result), err=as_json)


@main.command(cls=Command, usage_exit_code=EXIT_UNKNOWN)
@click.option("--duration", type=float, callback=_seconds, metavar="SECONDS",
              help="Sample this long, then judge [default: the warm-up (half of --window) + "
                   "--for + 2 s, 12 s with the defaults]. CRITICAL needs the condition held "
                   "for --for.")
@watch_options
@limit_options
@click.pass_context
def check(ctx: click.Context, duration: Optional[float], pid: Optional[int],
          statsd: Optional[str], statsd_prefix: str, config_file: Optional[str],
          **limits: Any) -> None:
    """Sample for a while, print one status line with perfdata, exit 0 OK / 1 WARNING /
    2 CRITICAL / 3 UNKNOWN (Nagios plugin convention; bad arguments are UNKNOWN too)."""
    from coherence.sentinel import Sentinel, Stop, stop_signals
    from coherence.sinks.nagios import NagiosSink
    config = _config(config_file, limits)
    if duration is None:
        duration = config.seizure.window_s / 2 + config.verdict.for_s + CHECK_MARGIN_S
    sink = NagiosSink.from_config(config, sys.stdout)
    sentinel = Sentinel.from_config(config, pid=pid, statsd=_hostport(statsd),
                                    statsd_prefix=statsd_prefix, sinks=[sink])
    try:
        with stop_signals(), sentinel:
            sentinel.run(duration)
    except (KeyboardInterrupt, Stop):
        raise click.ClickException("check interrupted") from None
    except SinkClosed:
        pass            # nobody reads the line (`| grep -q`): the exit code still says the status
    ctx.exit(sink.exit_code)


@main.command(cls=Command)
@click.option("--pid", type=PID, help="Watch one process instead of the host/container.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per source, one per line.")
@click.option("--scrape", "runtime__scrape", metavar="URL", multiple=True,
              help="Also read this /metrics endpoint once and say what it gives. Repeatable.")
@click.option("--config", "config_file", type=click.Path(dir_okay=True),
              help="A TOML file of settings (its [runtime] scrape targets are read too).")
def sources(pid: Optional[int], as_json: bool, config_file: Optional[str], **limits: Any) -> None:
    """Which counters this host offers, which are in use, and why the others are not.

    Per family (cpu, memory, pressure, requests) the candidates are listed in preference
    order; the first available one is used. Then every JVM on the host and every scrape
    target (family runtime), each read once: what it gives, or why not.
    """
    from coherence import runtime
    from coherence.sinks.sources import json_lines, table_lines
    from coherence.sources import SourceUnavailable, cpu_capacity, describe, pid_dir
    if pid is not None:
        try:
            pid_dir("/proc", pid)       # "no process N", or hidden from us (hidepid)
        except SourceUnavailable as err:
            raise click.BadParameter(str(err), param_hint="'--pid'") from None
    config = _config(config_file, limits)
    rows = describe(pid=pid) + runtime.rows(config, pid)
    ncpu, why = cpu_capacity(pid=pid)
    if as_json:
        for line in json_lines(rows, ncpu, why):
            click.echo(line)
        return
    for line in table_lines(rows, ncpu, why):
        click.echo(line)


# ---------------------------------------------------------------------------------- record, replay
# (issue 13) `coherence record` writes what the detectors judge; `coherence replay` judges it again.
@main.command(cls=Command)
@click.option("-o", "--output", required=True, metavar="FILE",
              help="The recording to write: JSON lines, gzip-compressed when FILE ends in .gz "
                   "(about 1 MB an hour with .gz, README: Record and replay).")
@click.option("--duration", type=float, callback=_seconds, metavar="SECONDS",
              help="Stop after this long and exit 0 (default: until Ctrl-C or SIGTERM, which "
                   "also leave a complete file).")
@json_option
@watch_options
@limit_options
def record(output: str, duration: Optional[float], as_json: bool, pid: Optional[int],
           statsd: Optional[str], statsd_prefix: str, config_file: Optional[str],
           **limits: Any) -> None:
    """Record the raw signals the detectors judge (CPU buckets, memory, faults, PSI, request and
    runtime counters, each with its source) for `coherence replay`, while judging them live:
    plain status lines on stdout, JSON lines with --json."""
    from coherence.record import Recorder
    from coherence.recording import open_for_writing
    from coherence.sentinel import Sentinel
    from coherence.sinks.plain import PlainStatusSink
    config = _config(config_file, limits)
    if as_json:
        from coherence.sinks.jsonl import JsonLinesSink
        sink: Sink = JsonLinesSink.from_config(config, sys.stdout)
    else:
        sink = PlainStatusSink.from_config(config, sys.stdout)
    stream = open_for_writing(output)
    try:
        sentinel = Sentinel.from_config(config, pid=pid, statsd=_hostport(statsd),
                                        statsd_prefix=statsd_prefix, sinks=[sink])
    except BaseException:
        stream.close()
        os.unlink(output)
        raise
    recorder = Recorder.attach(output, sentinel, config, stream)
    with _until_stopped(), recorder, sentinel:
        sentinel.run(duration, on_report=recorder.poll)
        recorder.end_reason = "duration"
    click.echo(f"coherence: recorded {recorder.chunks} s to {output} "
               f"({recorder.size_bytes / 1e3:.0f} kB)", err=True)


@main.command(cls=Command, stray="{me} judges a recording: {options} are for {home}")
@click.argument("file", metavar="FILE")
@json_option
@click.option("--mapping", metavar="TOML",
              help="FILE is the JSON of a Prometheus /api/v1/query_range (a matrix): this file "
                   "maps its series to coherence's signals (README: Replaying Prometheus data).")
@limit_options
def replay(file: str, as_json: bool, mapping: Optional[str], config_file: Optional[str],
           **limits: Any) -> None:
    """Judge a recording (coherence record) or a Prometheus range query again, with the same
    detectors and verdicts, as fast as the machine goes: the live outputs (plain status lines,
    JSON lines with --json), then each alarm with the classic alerts beside it. Flags and
    --config change the settings the recording was made with. A file that stops being
    readable is replayed up to there, then one line says why and the exit is 2."""
    from coherence.config import read_file
    from coherence.replay import play, replay_config
    from coherence.sinks import replay as replay_sink
    from coherence.sinks.base import opened
    from coherence.sinks.plain import PlainStatusSink
    if mapping is not None:
        from coherence.promql import load as load_prometheus
        header, records = load_prometheus(file, mapping)
    else:
        from coherence.recording import Recording
        recording = Recording(file)
        header, records = recording.header, recording.records()
    overrides = {key: limits.pop(key.replace(".", "__"), None) for _, key, _, _ in LIMIT_OPTIONS}
    config = replay_config(header, read_file(config_file) if config_file else None, overrides)
    if as_json:
        from coherence.sinks.jsonl import JsonLinesSink
        sink: Sink = JsonLinesSink.from_config(config, sys.stdout)
    else:
        sink = PlainStatusSink.from_config(config, sys.stdout)
    result = None
    with _until_stopped(), opened([sink]) as emit:
        result = play(header, records, config, on_report=emit, source=file)
    if result is None:
        return
    if sys.stdout.isatty() and not as_json:
        from rich.console import Console
        Console().print(replay_sink.result_table(result))
    else:
        click.echo(replay_sink.format_result(result), err=as_json)
    if result.error is not None:
        raise click.ClickException(str(result.error))


def run(argv: Optional[List[str]] = None) -> int:
    """The console entry point: click without its multi-line errors and tracebacks."""
    from coherence.sampler import SamplerError
    from coherence.sinks.http import ExporterError
    from coherence.statsd import StatsdError
    from coherence.webconfig import WebConfigError
    args = sys.argv[1:] if argv is None else argv
    command = main.commands.get(main.command_name(args) or "")
    bad = command.usage_exit_code if isinstance(command, Command) else EXIT_USAGE
    try:
        code = main.main(args=args, prog_name="coherence", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        return 130
    except click.ClickException as e:
        click.echo(f"coherence: {e.format_message()}", err=True)
        return bad
    except (ConfigError, SamplerError, StatsdError, ExporterError, WebConfigError, ValueError,
            SinkFailed) as e:
        click.echo(f"coherence: {e}", err=True)
        return bad
    except (BrokenPipeError, SinkClosed, KeyboardInterrupt):
        return 0
    except OSError as e:
        click.echo(f"coherence: {e.strerror or e}", err=True)
        return bad
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())

"""Every default of the sentinel in one object, overridable by a TOML file and by flags, and
validated with errors that name the setting: `ConfigError` carries one line for the user.

    [seizure]
    std_limit_pct = 25
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Mapping, Optional, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib


# The fastest the sampler reads (ticks per second).
MAX_HZ = 2000


class ConfigError(Exception):
    """An invalid setting; ``str(err)`` is one line naming it."""


# Values one window keeps (8 bytes each, in several accumulators): a day of 0.1 s buckets is
# 864 000; a window past this would fail to allocate at start-up, long after the file was read.
MAX_WINDOW_VALUES = 1_000_000


@dataclass(frozen=True)
class SamplerConfig:
    hz: float = 1000.0                 # CPU counters read per second (1-MAX_HZ)
    slow_hz: float = 20.0              # memory, PSI and request counters (5-20 us a read); at most hz
    rate_half_life_s: float = 1.0      # smoothing of rates: fault rate, request rates, PSI
    runtime_hz: float = 2.0            # runtime counters (JVM performance data, scrapes), off the tick


@dataclass(frozen=True)
class SeizureConfig:
    resolution_s: float = 0.1          # bucket of CPU utilization: the timescale that matters
    window_s: float = 10.0             # std over this many seconds of buckets
    std_limit_pct: float = 20.0        # std of utilization, in points of %: 0/100 flips give 50
    mean_ceiling_pct: float = 75.0     # above this mean the host is busy, not seizing
    min_swings: int = 3                # crossings of the mean: a step is 1, a pulse 2, a seizure 3+


@dataclass(frozen=True)
class FeverConfig:
    churn_limit_mb_s: float = 512.0    # anonymous-page faults x page size, MB/s (~131k faults/s)
    flat_pct: float = 2.0              # resident growth over the window under this % of memory
    window_s: float = 10.0             # for the resident trend
    horizon_h: float = 4.0             # a forecast of exhaustion sooner than this is a WARNING
    # A runtime spending this share of wall time in GC is in distress: a JVM in a death spiral
    # spends ~70 %, a busy healthy one ~2 % (issue 10's measurements); HotSpot gives up at 98 %.
    gc_time_limit_pct: float = 25.0
    alloc_baseline_half_life_s: float = 120.0   # each runtime's usual allocation rate, learned healthy


@dataclass(frozen=True)
class AmplificationConfig:
    ratio_limit: float = 1.1           # egress / ingress above this ...
    baseline_factor: float = 1.3       # ... and above the learned baseline times this
    baseline_half_life_s: float = 120.0  # how fast the baseline learns (only while healthy)
    min_ingress_per_s: float = 1.0     # under this there is too little traffic to judge
    window_s: float = 5.0              # the ratio's sliding window


@dataclass(frozen=True)
class VerdictConfig:
    for_s: float = 5.0                 # a condition held this long is CRITICAL
    clear_s: float = 10.0              # and OK again only after clear this long
    cascade_window_s: float = 60.0     # 2+ detectors CRITICAL within this: a cascade
    flap_changes: int = 6              # this many state changes ...
    flap_window_s: float = 120.0       # ... within this: flapping


@dataclass(frozen=True)
class OutputConfig:
    report_interval_s: float = 1.0     # one JSON line / screen update of figures this often
    refresh_hz: float = 10.0           # dashboard redraws at most this often


@dataclass(frozen=True)
class RuntimeConfig:
    # /metrics endpoints of services and sidecars (Go client, Micrometer, OpenTelemetry, Envoy,
    # gRPC, ...), read at sampler.runtime_hz; JVMs on the host are found without settings
    scrape: Tuple[str, ...] = ()
    ingress_metric: str = ""           # a selector, name{label="v"}, for requests in ...
    egress_metric: str = ""            # ... calls out, and bytes allocated, where the known
    alloc_metric: str = ""             # names do not fit
    scrape_timeout_s: float = 0.5      # the whole answer, connect to last byte
    scrape_max_mb: float = 4.0         # a larger answer is refused, not read


# The exporter's port when none is given: outside 9100-9999, Prometheus' range of default
# exporter ports, full since 2023, and the 10000s where new allocations now go; under the
# kernel's ephemeral range (32768-60999), so an outgoing connection never holds it; in no
# /etc/services entry. (README, "Prometheus".)
DEFAULT_EXPORTER_PORT = 21950
DEFAULT_EXPORTER_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ExporterConfig:
    # HOST:PORT for /metrics and /healthz; "" serves nothing (coherence serve then takes
    # 127.0.0.1:DEFAULT_EXPORTER_PORT). A bare ":PORT" or "PORT" is 127.0.0.1, never every interface.
    listen: str = ""
    web_config: str = ""               # exporter-toolkit's web config file: TLS, basic auth
    # /healthz answers 503 once the last report or the sampler's last tick is older than this:
    # 20 missed judgements at 4 a second, 5 missed ticks at the lowest --hz
    stale_after_s: float = 5.0


def parse_listen(text: str) -> Tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT, :PORT or PORT as (host, port); a missing host is 127.0.0.1, not
    every interface (say 0.0.0.0 or [::] for those). ValueError with the reason."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError(f"{text!r} is not HOST:PORT (write an IPv6 address in brackets: [::1]:PORT)")
    host = host[1:-1] if host.startswith("[") else host
    if not port.isdigit() or not 0 <= int(port) < 65536:
        # 0: any free port (`coherence serve` logs the one it got)
        raise ValueError(f"{text!r} is not HOST:PORT with a port from 0 to 65535")
    if any(c.isspace() for c in host):
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host or DEFAULT_EXPORTER_HOST, int(port)


@dataclass(frozen=True)
class Config:
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    seizure: SeizureConfig = field(default_factory=SeizureConfig)
    fever: FeverConfig = field(default_factory=FeverConfig)
    amplification: AmplificationConfig = field(default_factory=AmplificationConfig)
    verdict: VerdictConfig = field(default_factory=VerdictConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    exporter: ExporterConfig = field(default_factory=ExporterConfig)

    def validate(self) -> "Config":
        """Check every value and the relations between them; ConfigError naming the first bad one."""
        for section in fields(self):
            values = getattr(self, section.name)
            for f in fields(values):
                v = getattr(values, f.name)
                name = f"{section.name}.{f.name}"
                if isinstance(f.default, (str, tuple)):
                    continue                  # text settings: checked below, by what they mean
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ConfigError(f"{name} must be a finite number, got {v!r}")
                if v <= 0:
                    raise ConfigError(f"{name} must be > 0, got {v!r}")
        s = self.sampler
        if not 1 <= s.hz <= MAX_HZ:
            raise ConfigError(f"sampler.hz must be between 1 and {MAX_HZ}, got {s.hz:g}")
        if s.runtime_hz > 20:
            # each round reads every JVM file and scrape target in Python, off the tick
            raise ConfigError(f"sampler.runtime_hz must be at most 20, got {s.runtime_hz:g}")
        z = self.seizure
        if z.resolution_s < 1.0 / s.hz:
            what = f"seizure.resolution_s ({z.resolution_s:g} s) is shorter than one tick at {s.hz:g} Hz"
            if 1 / z.resolution_s > MAX_HZ:     # no hz can give it: only the resolution can change
                raise ConfigError(f"{what}, and the sampler reads at most {MAX_HZ} times a second: "
                                  f"raise the resolution to at least {1 / s.hz:g} s "
                                  f"({1 / MAX_HZ:g} s with hz = {MAX_HZ})")
            raise ConfigError(f"{what}: raise hz to at least {math.ceil(1 / z.resolution_s):g} "
                              f"or the resolution to {1 / s.hz:g} s")
        if z.window_s < 2 * z.resolution_s:
            raise ConfigError(f"seizure.window_s ({z.window_s:g} s) must hold at least two buckets "
                              f"of seizure.resolution_s ({z.resolution_s:g} s)")
        for name, pct in (("seizure.std_limit_pct", z.std_limit_pct),
                          ("seizure.mean_ceiling_pct", z.mean_ceiling_pct),
                          ("fever.flat_pct", self.fever.flat_pct),
                          ("fever.gc_time_limit_pct", self.fever.gc_time_limit_pct)):
            if pct > 100:
                raise ConfigError(f"{name} is a percentage: at most 100, got {pct:g}")
        a = self.amplification
        if a.ratio_limit < 1 or a.baseline_factor < 1:
            raise ConfigError("amplification.ratio_limit and baseline_factor must be >= 1")
        if a.window_s * s.slow_hz < 2 or self.fever.window_s * s.slow_hz < 2:
            raise ConfigError("amplification.window_s and fever.window_s must hold at least two "
                              "reads at sampler.slow_hz")
        for name, values in (("seizure.window_s / seizure.resolution_s", z.window_s / z.resolution_s),
                             ("amplification.window_s * sampler.slow_hz", a.window_s * s.slow_hz),
                             ("amplification.window_s * sampler.runtime_hz", a.window_s * s.runtime_hz),
                             ("fever.window_s * sampler.slow_hz", self.fever.window_s * s.slow_hz)):
            if values > MAX_WINDOW_VALUES:
                raise ConfigError(f"{name} is {values:g} values a window: at most {MAX_WINDOW_VALUES:g}")
        self._validate_runtime()
        if self.exporter.listen:
            try:
                parse_listen(self.exporter.listen)
            except ValueError as err:
                raise ConfigError(f"exporter.listen: {err}") from None
        for name, count, least in (("verdict.flap_changes", self.verdict.flap_changes, 2),
                                   ("seizure.min_swings", self.seizure.min_swings, 2)):
            if int(count) != count or count < least:
                raise ConfigError(f"{name} must be an integer >= {least}, got {count!r}")
        return self

    def _validate_runtime(self) -> None:
        from coherence.sources.scrape import Selector, check_url
        r = self.runtime
        for url in r.scrape:
            try:
                check_url(url)
            except ValueError as err:
                raise ConfigError(f"runtime.scrape: {err}") from None
        if len(set(r.scrape)) != len(r.scrape):
            raise ConfigError("runtime.scrape: the same URL twice")
        if r.scrape_max_mb * (1 << 20) < 1:
            raise ConfigError(f"runtime.scrape_max_mb must be at least one byte, got {r.scrape_max_mb:g}")
        for key in ("ingress_metric", "egress_metric", "alloc_metric"):
            text = getattr(r, key)
            if text:
                try:
                    Selector.parse(text)
                except ValueError as err:
                    raise ConfigError(f"runtime.{key}: {err}") from None

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Config":
        """A copy with "section.key" values replaced (None values are skipped), validated."""
        sections: Dict[str, Dict[str, Any]] = {}
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, key = dotted.partition(".")
            sections.setdefault(section, {})[key] = value
        return _apply(self, sections, "override").validate()


def _shown(name: str) -> str:
    # TOML's quoted keys may hold newlines and control characters: the error stays one line
    return name if name.isprintable() else repr(name)


def _apply(config: Config, data: Mapping[str, Any], origin: str) -> Config:
    known_sections = {f.name: f for f in fields(config)}
    changes: Dict[str, Any] = {}
    for section, values in data.items():
        if section not in known_sections:
            raise ConfigError(f"{origin}: unknown section [{_shown(section)}] "
                              f"(known: {', '.join(sorted(known_sections))})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: [{section}] must be a table of settings")
        current = getattr(config, section)
        known = {f.name: f for f in fields(current)}
        values = dict(values)
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{origin}: unknown setting {section}.{_shown(key)} "
                                  f"(known: {', '.join(sorted(known))})")
            default = known[key].default
            if isinstance(default, tuple):
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"{origin}: {section}.{key} must be a list of strings, "
                                      f"got {value!r}")
                values[key] = tuple(value)
            elif isinstance(default, str):
                if not isinstance(value, str):
                    raise ConfigError(f"{origin}: {section}.{key} must be a string, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{origin}: {section}.{key} must be a number, got {value!r}")
        changes[section] = replace(current, **values)
    return replace(config, **changes)


def load(path: Optional[str]) -> Config:
    """Defaults, overridden by the TOML file at ``path`` if given; validated."""
    config = Config()
    if path is None:
        return config.validate()
    return _apply(config, read_file(path), f"config file {path}").validate()


def read_file(path: str) -> Dict[str, Any]:
    """The TOML settings file at ``path`` as tables, not yet applied; ConfigError if unreadable."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file") from None
    except PermissionError:
        raise ConfigError(f"config file {path}: permission denied") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path}: is a directory") from None
    except OSError as err:
        raise ConfigError(f"config file {path}: {err.strerror or err}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path}: not valid TOML: {err}") from None


def as_dict(config: Config) -> Dict[str, Dict[str, float]]:
    return dataclasses.asdict(config)

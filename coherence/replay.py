"""`coherence replay`: a recording (or a Prometheus range query, coherence.promql) played through
the same accumulators, detectors and verdicts as the live host, as fast as the machine goes, on
the recording's own clock; then each alarm as an incident, with the classic alerts beside it.

    rec = Recording("incident.jsonl.gz")
    result = play(rec.header, rec.records(), replay_config(rec.header), on_report=print)
    print(sinks.replay.format_result(result))
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from coherence._sampler import Slot
from coherence.config import Config, ConfigError, _apply
from coherence.detectors import DETECTORS, Finding
from coherence.monitor import Monitor, Report
from coherence.recording import CPU_SERIES, SERIES, Chunk, End, Header, RecordingError, Track
from coherence.signals import RATE_SLOTS, Signals
from coherence.simulate import Classic, Incident, Step, _incident_key
from coherence.states import Condition, State

STEP_S = 0.25                 # the live sentinel judges 4 times a second (sentinel.EVAL_PERIOD_S)
_EPS = 1e-9
# the live request counters the engine pairs into a ratio: (egress, ingress)
_PAIRS = {Slot.EGRESS: Slot.INGRESS, Slot.TCP_ACTIVE: Slot.TCP_PASSIVE}
_PUSHED = (Slot.INGRESS, Slot.EGRESS)


def replay_config(header: Header, file_config: Optional[Mapping[str, Any]] = None,
                  overrides: Optional[Mapping[str, Any]] = None) -> Config:
    """The settings a replay judges with: the recording's own, then a settings file's (a TOML
    table), then the flags'. The sampler's rates are the recording's: they were what they were.
    The CPU resolution may be a whole multiple of the recording's (its buckets are merged)."""
    try:
        config = _apply(Config(), header.settings, f"{header.origin} settings")
    except ConfigError:
        config = Config()         # settings of another version: judge with today's defaults
    if file_config:
        config = _apply(config, file_config, "config file")
    # Seizure needs the data at its resolution; coarser data leave it UNAVAILABLE (play)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "sampler.hz" in given:
        raise ConfigError(f"--hz does not apply to a replay: the {header.origin} was sampled at "
                          f"{header.hz:g} Hz")
    resolution = given.get("seizure.resolution_s")
    if resolution is not None and resolution < header.resolution_s - _EPS:
        raise ConfigError(f"--resolution {resolution:g} s is finer than the {header.origin}'s "
                          f"data (a CPU reading every {header.resolution_s:g} s)")
    # the sampler's rates are the data's; hz only bounds the resolution (here: the data's)
    sampler = {"hz": min(max(header.hz, 1.0 / config.seizure.resolution_s, 1.0), 2000.0),
               "slow_hz": header.slow_hz, "runtime_hz": min(header.runtime_hz, 20.0)}
    config = replace(config, sampler=replace(config.sampler, **sampler))
    # a trend needs three reads, a ratio two: scrapes every 15 s widen those windows
    read_s = 1.0 / header.slow_hz
    config = replace(config,
                     fever=replace(config.fever, window_s=max(config.fever.window_s, 3 * read_s)),
                     amplification=replace(config.amplification, window_s=max(
                         config.amplification.window_s, 2 * read_s)))
    config = config.with_overrides(given)
    factor = config.seizure.resolution_s / header.resolution_s
    if factor >= 1 - _EPS and abs(factor - round(factor)) > 1e-6:
        raise ConfigError(f"--resolution {config.seizure.resolution_s:g} s: a replay merges the "
                          f"{header.origin}'s buckets of {header.resolution_s:g} s, so it must be a "
                          "whole multiple of that")
    return config


def unavailable_for(header: Header, config: Config) -> Dict[str, str]:
    """The detectors the data cannot feed at the timescale the settings ask, and why."""
    out = dict(header.unavailable)
    res, what = config.seizure.resolution_s, _what(header)
    if "cpu" not in header.available:
        out.setdefault("seizure", f"the {what} have no CPU series")
    elif res < header.resolution_s - _EPS:
        out.setdefault("seizure", (
            f"the {what} have a CPU reading every {header.resolution_s:g} s: a seizure shows in "
            f"{res * 1000:g} ms buckets, which these data cannot show (--resolution "
            f"{header.resolution_s:g} --window {20 * header.resolution_s:g} judges that coarser "
            "timescale)"))
    return out


def _what(header: Header) -> str:
    return "Prometheus data" if header.origin == "prometheus" else f"{header.origin}'s data"


class Unavailable:
    """A detector the data cannot feed (a seizure at 100 ms from 15 s scrapes): UNAVAILABLE with
    the reason, every step, never silently OK."""

    def __init__(self, detector: Any, reason: str) -> None:
        self.name, self.unit, self.veto = detector.name, detector.unit, detector.veto
        self.limit = float(getattr(detector.c, "std_limit_pct", math.nan)) \
            if detector.name == "seizure" else math.nan
        self.reason = reason

    def evaluate(self, snap: Any, now: float) -> Finding[Any]:
        return Finding(detector=self.name, condition=Condition.UNAVAILABLE, value=math.nan,
                       limit=self.limit, unit=self.unit, reason=self.reason, veto=self.veto)


@dataclass(frozen=True)
class ReplayResult:
    """What a replay ends with: every step's states and each alarm as an incident."""

    source: str                      # the file replayed
    header: Header
    duration_s: float                # of the recording replayed
    incidents: Tuple[Incident, ...]
    steps: Tuple[Step, ...] = field(repr=False)
    error: Optional[RecordingError] = None   # the file stopped being readable there

    @property
    def missed(self) -> int:
        return sum(1 for i in self.incidents if i.classic_after_s is None)


class RecordedRuntime:
    """A runtime source as the recording knew it: a name, a runtime, a pid (the RuntimeTrack's
    source; never read: its readings come from the file)."""

    def __init__(self, track: Track) -> None:
        self.name, self.runtime, self.pid = track.name, track.runtime, track.pid

    def read(self) -> Mapping[str, float]:       # pragma: no cover - never polled
        return {}

    def close(self) -> None:
        pass


class Player:
    """Feeds recorded series into Signals exactly as the live engine feeds them: each counter's
    rate and last value, resident memory's trend, the request pairs' ratio windows, the CPU
    buckets (``factor`` recorded buckets merged into one); the classic alerts beside."""

    def __init__(self, signals: Signals, factor: int, classic: Classic) -> None:
        self.signals, self.factor, self.classic = signals, factor, classic
        self._merge: List[float] = []
        self._last: Dict[int, Tuple[float, float]] = {}      # slot -> (t, value) last fed
        self._prev: Dict[int, float] = {}                    # slot -> value at the last pair
        self.pushed = False
        self.tracks: Dict[int, Any] = {}
        self._rates = {int(s) for s in RATE_SLOTS}

    def bucket(self, util: float) -> None:
        self._merge.append(util)
        if len(self._merge) < self.factor:
            return
        value = sum(self._merge) / len(self._merge)
        self._merge.clear()
        self.signals.cpu_buckets.push(value)
        self.signals.cpu_history.push(value)
        self.classic.add_cpu(value)

    def value(self, slot: int, t: float, v: float) -> None:
        s = self.signals
        if slot in self._rates:
            s.rates[slot].update(t, v)
        if slot == Slot.RESIDENT_BYTES:
            s.resident_history.push(v)
        s.gauges.update({slot: v}, t)
        self._last[slot] = (t, v)
        if slot in _PUSHED and v > 0:
            self.pushed = True
        if slot in (Slot.RESIDENT_BYTES, Slot.MEM_TOTAL_BYTES):
            total = self._last.get(Slot.MEM_TOTAL_BYTES, (0.0, math.nan))[1]
            resident = self._last.get(Slot.RESIDENT_BYTES, (0.0, math.nan))[1]
            self.classic.memory_pct = 100.0 * resident / total if total > 0 else math.nan
        ingress = _PAIRS.get(Slot(slot)) if slot in (Slot.EGRESS, Slot.TCP_ACTIVE) else None
        if ingress is not None and self._last.get(ingress, (math.nan, 0.0))[0] == t:
            self._pair(slot, ingress, v, self._last[ingress][1])

    def _pair(self, eg: int, ing: int, e: float, i: float) -> None:
        """A delta of both counters read at the same tick, as the engine's _feed_ratio."""
        window = self.signals.pushed_ratio if eg == Slot.EGRESS else self.signals.proxy_ratio
        if eg in self._prev and ing in self._prev:
            de, di = e - self._prev[eg], i - self._prev[ing]
            window.update(de if de >= 0 else e, di if di >= 0 else i)
        self._prev[eg], self._prev[ing] = e, i

    def runtime(self, t: float, index: int, values: Optional[Dict[str, float]],
                reason: str) -> None:
        track = self.tracks.get(index)
        if track is None:
            return
        if values is None:
            track.lose(reason)
        else:
            track.update(t, values)

    def declare(self, track: Track) -> None:
        self.tracks[track.index] = self.signals.runtime.add(RecordedRuntime(track))

    def lose(self, name: str) -> None:
        self.signals.gauges.lose(SERIES[name])


# an event: (time, order, what, payload); order keeps a tick's slots in the engine's order
Event = Tuple[float, int, int, Any]
_BUCKET, _VALUE, _RUNTIME, _LOST = 0, 1, 2, 3


def _events(chunk: Chunk) -> List[Event]:
    out: List[Event] = []
    for name, (times, values) in chunk.series.items():
        if name == CPU_SERIES:
            out += [(t, -1, _BUCKET, v) for t, v in zip(times, values)]
        else:
            slot = int(SERIES[name])
            out += [(t, slot, _VALUE, (slot, v)) for t, v in zip(times, values)]
    out += [(t, 100, _RUNTIME, (i, values, reason)) for t, i, values, reason in chunk.runtime]
    out += [(t, 200, _LOST, name) for t, name in chunk.lost]
    return out


def play(header: Header, records: Iterable[Union[Chunk, End]], config: Config,
         on_report: Optional[Callable[[Report], Any]] = None, source: str = "",
         unavailable: Optional[Mapping[str, str]] = None) -> ReplayResult:
    """Every record through the accumulators, the monitor judging at the recorded steps (every
    STEP_S of the recording's time where none were recorded); every Report to ``on_report``.
    A RecordingError from ``records`` ends the replay there: the result carries it."""
    factor = max(1, int(round(config.seizure.resolution_s / header.resolution_s)))
    classic = Classic(config.seizure.resolution_s, 1.0 / header.slow_hz)
    player: Optional[Player] = None
    signals = Signals.from_config(config, ncpu=header.ncpu, slow_hz=header.slow_hz,
                                  pushed=lambda: player is not None and player.pushed,
                                  available=header.available)
    player = Player(signals, factor, classic)
    monitor = Monitor(config, signals.snapshot)
    for name, reason in {**unavailable_for(header, config), **(unavailable or {})}.items():
        setattr(monitor, name, Unavailable(getattr(monitor, name), reason))
    steps: List[Step] = []
    fired: List[Tuple[str, ...]] = []
    forecast: List[Tuple[str, ...]] = []
    pending: List[Event] = []
    next_grid = 0.0
    end_s = 0.0
    error: Optional[RecordingError] = None

    def feed(until: float) -> None:
        nonlocal pending
        k = 0
        for k, (t, _, what, payload) in enumerate(pending):   # noqa: B007 (k used after)
            if t > until + _EPS:
                break
            if what == _BUCKET:
                player.bucket(payload)
            elif what == _VALUE:
                player.value(payload[0], t, payload[1])
            elif what == _RUNTIME:
                player.runtime(t, *payload)
            else:
                player.lose(payload)
        else:
            k = len(pending)
        pending = pending[k:]

    def step(now: float) -> None:
        report = monitor.step(now, header.started_at + now)
        v = report.verdict
        steps.append(Step(now, v.status, tuple((n, v.states[n]) for n in DETECTORS),
                          tuple(_incident_key(i) for i in v.incidents)))
        fired.append(classic.firing())
        forecast.append(tuple(n for n in DETECTORS
                              if report.findings[n].max_state == State.WARNING
                              and v.states[n].alarmed))
        if on_report is not None:
            on_report(report)

    try:
        for record in records:
            if isinstance(record, End):
                end_s = max(end_s, record.end_s)
                break
            for track in record.tracks:
                player.declare(track)
            pending = sorted(pending + _events(record))
            if record.steps:
                for now in record.steps:
                    feed(now)
                    step(now)
            else:
                while next_grid <= record.end_s + _EPS:
                    feed(next_grid)
                    step(next_grid)
                    next_grid += STEP_S
            end_s = max(end_s, record.end_s)
    except RecordingError as err:
        error = err
    incidents = _episodes(steps, fired, forecast)
    return ReplayResult(source, header, end_s, incidents, tuple(steps), error)


def _r(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds, 2)


def _episodes(steps: List[Step], fired: List[Tuple[str, ...]],
              forecast: List[Tuple[str, ...]]) -> Tuple[Incident, ...]:
    """Each alarm (a detector from not alarmed to WARNING or CRITICAL, until OK again) as an
    incident: when it was called CRITICAL after its first WARNING, and when a classic alert
    started firing (from a classic window before the WARNING: it may have been first)."""
    from coherence.simulate import CLASSIC_WINDOW_S
    out: List[Incident] = []
    starts: List[Tuple[int, str]] = []
    open_at: Dict[str, int] = {}
    for k, s in enumerate(steps):
        states = dict(s.states)
        for d in DETECTORS:
            if states[d].alarmed and d not in open_at:
                open_at[d] = k
                starts.append((k, d))
            elif states[d] == State.OK and d in open_at:
                del open_at[d]
    for n, (k, d) in enumerate(starts):
        t0 = steps[k].t
        end_k = next((j for j in range(k + 1, len(steps))
                      if dict(steps[j].states)[d] == State.OK), len(steps) - 1)
        critical = next((steps[j].t - t0 for j in range(k, end_k + 1)
                         if dict(steps[j].states)[d] == State.CRITICAL), None)
        cascade = next((steps[j].t - t0 for j in range(k, end_k + 1)
                        if any(kind == "cascade" and d in ds for kind, ds in steps[j].incidents)),
                       None)
        is_forecast = d in forecast[k]
        kind = "cascade" if cascade is not None else "forecast" if is_forecast else "single"
        classic_at = classic_alert = None
        before: Tuple[str, ...] = ()
        for j in range(len(steps)):
            alerts = fired[j]
            new = [a for a in alerts if a not in before]
            before = alerts
            if steps[j].t < t0 - CLASSIC_WINDOW_S - _EPS:
                continue
            if j > end_k:
                break
            if new:
                classic_at, classic_alert = steps[j].t - t0, new[0]
                break
        out.append(Incident(f"{d} #{n + 1}", kind, (d,), round(t0, 2), round(steps[end_k].t, 2), 0.0,
                            _r(cascade if kind == "cascade" else critical), _r(classic_at),
                            classic_alert))
    return tuple(out)

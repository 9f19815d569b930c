"""The Nagios/Icinga/Sensu plugin output of `coherence check`: after the run, one line
`COHERENCE <STATUS> - <reasons> | <perfdata>`, and the plugin's exit code (0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN). Missing figures are written as `U`."""
from __future__ import annotations

import sys
from typing import IO, Any, Optional, Type, TypeVar

from coherence.config import Config
from coherence.detectors import Evidence, FeverEvidence, SeizureEvidence
from coherence.monitor import Report
from coherence.sinks.base import write_line

E = TypeVar("E", bound=Evidence)
EXIT_UNKNOWN = 3            # the plugin convention: no report to judge by


def _fmt(x: Any, spec: str = ".1f") -> str:
    """A perfdata number; U (undetermined, the plugin convention) when there is none."""
    return "U" if x is None or x != x else format(x, spec)


def _evidence(report: Report, name: str, kind: Type[E]) -> Optional[E]:
    e = report.findings[name].evidence
    return e if isinstance(e, kind) else None


def check_line(report: Report, config: Optional[Config] = None) -> str:
    """`COHERENCE <STATUS> - <reasons> | <perfdata>` (Nagios plugin output)."""
    verdict, findings = report.verdict, report.findings
    parts = [f"{name} {verdict.states[name]}: {f.reason}" for name, f in findings.items()]
    seizure, amp = findings["seizure"], findings["amplification"]
    cpu = _evidence(report, "seizure", SeizureEvidence)
    memory = _evidence(report, "fever", FeverEvidence)
    sampler = report.sampler or {}
    perf = [
        f"seizure_cpu_std_pct={_fmt(seizure.value)};{seizure.limit:g};;0;100",
        f"seizure_cpu_mean_pct={_fmt(cpu.mean_pct if cpu else None)};;;0;100",
        f"fever_alloc_mb_s={_fmt(memory.alloc_rate_mb_s if memory else None)};"
        f"{(config or Config()).fever.churn_limit_mb_s:g};;0;",
        f"fever_resident_mb={_fmt(memory.resident_mb if memory else None, '.0f')};;;0;",
        f"amplification_ratio={_fmt(amp.value, '.3f')};{amp.limit:g};;0;",
        f"sampler_hz={_fmt(sampler.get('achieved_hz'))};;;0;",
        f"sampler_p99_lateness_us={_fmt(sampler.get('tick_lateness_p99_us'), '.0f')};;;0;",
        f"sampler_cpu_pct={_fmt(sampler.get('cpu_percent'), '.2f')};;;0;100",
    ]
    return f"COHERENCE {verdict.status.nagios} - {'; '.join(parts)} | {' '.join(perf)}"


class NagiosSink:
    """Keeps the last report; leaving the ``with`` block normally writes its check line (an
    interrupted check writes nothing: the caller says UNKNOWN)::

        with NagiosSink(sys.stdout) as sink:
            for report in reports:
                sink.emit(report)
        sys.exit(sink.exit_code)
    """

    def __init__(self, stream: Optional[IO[str]] = None, config: Optional[Config] = None) -> None:
        self.stream: IO[str] = stream if stream is not None else sys.stdout
        self.config = config if config is not None else Config()
        self.report: Optional[Report] = None

    @classmethod
    def from_config(cls, config: Config, stream: Optional[IO[str]] = None) -> "NagiosSink":
        return cls(stream, config)

    def emit(self, report: Report) -> bool:
        self.report = report
        return False

    def __enter__(self) -> "NagiosSink":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None and self.report is not None:
            write_line(self.stream, check_line(self.report, self.config))

    @property
    def exit_code(self) -> int:
        """The plugin's exit code: the last report's status, UNKNOWN (3) without a report."""
        return self.report.status.exit_code if self.report is not None else EXIT_UNKNOWN

"""What a replay ends with: each alarm coherence raised over the recording as an incident, when it
was called CRITICAL after its first WARNING and when the classic threshold alerts fired, in the
columns of the simulator's lead-time table (plain for a pipe or a log, rich for a terminal)."""
from __future__ import annotations

import time
from typing import Any, List

from coherence.replay import ReplayResult
from coherence.simulate import (CLASSIC_CPU_PCT, CLASSIC_MEMORY_PCT, CLASSIC_WINDOW_S, HEADERS)
from coherence.sinks.simulation import plain_table, rich_table

# the simulator's columns, but an incident starts at coherence's first WARNING (a recording does
# not know when the fault started)
REPLAY_HEADERS = (HEADERS[0], "WARNED AT", *HEADERS[2:])


def _title(result: ReplayResult) -> str:
    h = result.header
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h.started_at))
    return (f"coherence replay {result.source}: {result.duration_s:g} s from {h.host} "
            f"({h.origin} from {when}), {len(result.incidents)} incidents")


def _footer(result: ReplayResult) -> List[str]:
    lines = [f"Classic alerts: CPU > {CLASSIC_CPU_PCT:g} % on its {CLASSIC_WINDOW_S:g} s rolling "
             f"mean, used memory > {CLASSIC_MEMORY_PCT:g} % (the error-rate rule needs errors, "
             "which a recording does not hold).",
             "Times are seconds after coherence's first WARNING (WARNED AT: seconds into the "
             "recording); a classic alert up to "
             f"{CLASSIC_WINDOW_S:g} s before it counts (negative); lead time = classic alert - "
             "coherence CRITICAL (for a forecast, - its WARNING)."]
    if result.incidents:
        lines.append(f"The classic alerts missed {result.missed} of {len(result.incidents)} "
                     "incidents.")
    else:
        lines.append("coherence raised no alarm over this recording.")
    return lines


def format_result(result: ReplayResult) -> str:
    """The incident table as plain text columns."""
    return plain_table(_title(result), result.incidents, _footer(result), REPLAY_HEADERS)


def result_table(result: ReplayResult) -> Any:
    """The incident table as a rich Table."""
    return rich_table(_title(result), result.incidents, _footer(result), REPLAY_HEADERS)

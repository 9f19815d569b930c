"""What the helper programs share: running `coherence` and collecting what it wrote, with a
timeout on every wait."""
from __future__ import annotations

import json
import subprocess
from typing import Any, Dict, List, Sequence

WAIT_S = 60.0       # a hang guard, never a measurement


def run(cmd: Sequence[str], **popen: Any) -> Dict[str, Any]:
    """Run ``cmd`` to its end: exit status, its JSON lines (or plain lines) and stderr."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=WAIT_S, **popen)
    return {"rc": proc.returncode, "lines": lines(proc.stdout), "stderr": proc.stderr}


def lines(text: str) -> List[Any]:
    out: List[Any] = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append(line)
    return out


def report(result: Dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)

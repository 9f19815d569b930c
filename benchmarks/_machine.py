"""What every runner shares: the machine a benchmark ran on (one line for its table), and its
raw figures written as --json asks."""
import json
from typing import Any, Optional


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def write_json(result: Any, dest: str, indent: Optional[int] = None) -> None:
    """The raw figures as JSON: on stdout for "-", else into the file ``dest``."""
    text = json.dumps(result, indent=indent, default=str)
    if dest == "-":
        print(text)
    else:
        with open(dest, "w") as f:
            f.write(text + "\n")

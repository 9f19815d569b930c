"""Inside `unshare --mount --propagation private` (as root): bind-mount each SOURCE over its
TARGET, then become COMMAND. What a container runtime does with a cgroup v1 directory (and,
with a cgroup namespace, v2): the sentinel sees the container's cgroup as the root.

usage: bind_exec.py SOURCE TARGET [SOURCE TARGET ...] -- COMMAND [ARG ...]
"""
from __future__ import annotations

import os
import subprocess
import sys

from _inside import WAIT_S


def main() -> None:
    split = sys.argv.index("--")
    pairs, command = sys.argv[1:split], sys.argv[split + 1:]
    for source, target in zip(pairs[::2], pairs[1::2]):
        subprocess.run(["mount", "--bind", source, target], check=True, timeout=WAIT_S)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()

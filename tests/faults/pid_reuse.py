"""Inside `unshare --pid --fork --mount-proc` (as root): `coherence live --pid T` watches a
process; T exits and its number is handed to a new process (through ns_last_pid, which the
namespace's root may write); the sentinel must not read the newcomer as the process it watched.

With "unobserved", the sentinel is stopped (SIGSTOP) from before T exits until its number is
taken again: it never sees the gap, the hardest case. Prints {"pid", "reused", "tries", "run"}.

usage: pid_reuse.py COHERENCE observed|unobserved
"""
from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import time
from typing import Optional

from _inside import WAIT_S, lines, report

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"
TRIES = 200          # other forks (the sentinel's threads) may take the number first


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0] == b"T"


def take_pid(pid: int) -> "tuple[Optional[subprocess.Popen], int]":
    """A new process with number ``pid`` (or None after TRIES), and the tries it took."""
    for tries in range(1, TRIES + 1):
        with open(NS_LAST_PID, "w") as f:
            f.write(str(pid - 1))
        newcomer = subprocess.Popen(["sleep", "600"])
        if newcomer.pid == pid:
            return newcomer, tries
        newcomer.kill()
        newcomer.wait(WAIT_S)
    return None, TRIES


def main() -> None:
    coherence, mode = sys.argv[1], sys.argv[2]
    watched = subprocess.Popen(["sleep", "600"])
    pid = watched.pid
    sentinel = subprocess.Popen([coherence, "live", "--json", "--hz", "200", "--duration", "5",
                                 "--pid", str(pid)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    assert sentinel.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(sentinel.stdout, selectors.EVENT_READ)
    first = ""
    while sel.select(WAIT_S):               # a second of the process's figures first
        line = sentinel.stdout.readline()
        first += line
        if not line or json.loads(line)["elapsed_s"] >= 1.0:
            break
    if mode == "unobserved":
        sentinel.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + WAIT_S
        while not stopped(sentinel.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
    watched.kill()
    watched.wait(WAIT_S)
    newcomer, tries = take_pid(pid)
    if mode == "unobserved":
        sentinel.send_signal(signal.SIGCONT)
    try:
        out, err = sentinel.communicate(timeout=WAIT_S)
    finally:
        sentinel.kill()
        if newcomer is not None:
            newcomer.kill()
    report({"pid": pid, "reused": newcomer is not None, "tries": tries,
            "run": {"rc": sentinel.returncode, "lines": lines(first + out), "stderr": err}})


if __name__ == "__main__":
    main()

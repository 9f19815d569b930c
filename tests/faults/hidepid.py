"""Inside `unshare --pid --fork --mount --propagation private` (as root): mount a /proc with
hidepid=2, start a process as root, and run `coherence` as an unprivileged user, for whom that
process is invisible. Prints {"hidden_pid", "host", "pid", "check", "sources"}: what each run gave.

usage: hidepid.py COHERENCE USER
"""
from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import tempfile

from _inside import WAIT_S, report, run


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, timeout=WAIT_S)


def reachable(path: str, uid: int) -> None:
    """Make every directory on the way to ``path`` traversable by everyone, in this mount
    namespace only: a directory closed to others (/root, where pyenv keeps the interpreter) is
    covered by an open tmpfs holding just the entry on the way, bind-mounted back."""
    parts = os.path.realpath(path).strip("/").split("/")
    for depth in range(len(parts) - 1):
        here = "/" + "/".join(parts[:depth])
        mode = os.stat(here).st_mode
        if mode & stat.S_IXOTH or os.stat(here).st_uid == uid:
            continue
        child = os.path.join(here, parts[depth])
        staging = tempfile.mkdtemp(prefix="coherence-faults-")
        mount("--rbind", child, staging)
        mount("-t", "tmpfs", "-o", "mode=0755,size=64k", "coherence-faults", here)
        os.mkdir(child)
        mount("--move", staging, child)


def main() -> None:
    coherence, user = sys.argv[1], sys.argv[2]
    account = pwd.getpwnam(user)
    mount("-t", "proc", "-o", "hidepid=2", "proc", "/proc")
    for path in (sys.executable, coherence, sys.prefix, sys.base_prefix):
        reachable(path, account.pw_uid)
    hidden = subprocess.Popen(["sleep", "600"])          # root's: hidden from `user`
    as_user = dict(user=account.pw_uid, group=account.pw_gid, extra_groups=[],
                   env={**os.environ, "HOME": "/tmp"}, cwd="/")
    try:
        report({
            "hidden_pid": hidden.pid,
            "visible_to_user": run(["test", "-e", f"/proc/{hidden.pid}"], **as_user)["rc"] == 0,
            "host": run([coherence, "live", "--json", "--hz", "200", "--duration", "3"], **as_user),
            "pid": run([coherence, "live", "--json", "--pid", str(hidden.pid), "--duration", "2"],
                       **as_user),
            "check": run([coherence, "check", "--pid", str(hidden.pid), "--duration", "2"], **as_user),
            "sources": run([coherence, "sources", "--pid", str(hidden.pid)], **as_user),
        })
    finally:
        hidden.kill()
        hidden.wait(WAIT_S)


if __name__ == "__main__":
    main()

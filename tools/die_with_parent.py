"""``python -m tools.die_with_parent PARENT_PID CMD [ARGS...]``: run CMD so that it gets SIGTERM when the
supervisor (PARENT_PID) dies, even by SIGKILL (Linux's parent-death signal), then become CMD (exec).

The supervisor used to set the signal in a ``preexec_fn``; that makes Python fork instead of spawn, and a
fork of a process with live gRPC threads runs gRPC's fork handlers, which now and then killed the child
before it could exec. This small program is spawned instead (no pre-exec hook) and sets the signal itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m tools.die_with_parent PARENT_PID CMD [ARGS...]", file=sys.stderr)
        return 2
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            print(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
            return 1
        if os.getppid() != parent:  # the supervisor died before the signal was set
            return 1
    os.execvp(command[0], command)  # never returns


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

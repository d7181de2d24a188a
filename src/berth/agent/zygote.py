"""A pre-loaded parent for supervisors: starting one costs a fork, not a Python start-up plus imports.

The agent starts one zygote and writes a session directory per line to its stdin. For each, the zygote
double-forks: the grandchild calls setsid() and becomes that session's supervisor, owned by init, so it
outlives both the zygote and the agent (sessions survive agent restarts). The zygote never runs an event
loop or threads, which keeps fork() safe.
"""

from __future__ import annotations

import os
import sys


def _become_supervisor(session_dir: str) -> None:
    os.setsid()
    if os.fork():
        os._exit(0)  # the intermediate child: the supervisor is re-parented to init
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    log = os.open(os.path.join(session_dir, "supervisor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, 256)
    from berth.agent import supervisor

    code = 1
    try:
        code = supervisor.run_in_this_process(session_dir)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    import berth.agent.supervisor  # noqa: F401  (the point: import once, fork many)

    print("ready", flush=True)
    for line in sys.stdin:
        session_dir = line.strip()
        if not session_dir:
            continue
        pid = os.fork()
        if pid == 0:
            _become_supervisor(session_dir)
        os.waitpid(pid, 0)
        print(f"started {session_dir}", flush=True)


if __name__ == "__main__":
    main()

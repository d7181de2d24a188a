"""A network namespace's own traffic: the byte counters of its interfaces, loopback excluded (``/proc/<pid>/net/dev``).

A session in a network namespace of its own (a container's) reaches the world through its own interfaces: the
worker's ``ss`` never sees its sockets, but these counters hold every byte it sent or received.
"""

from __future__ import annotations

import os


def parse_net_dev(text: str) -> tuple[int, int]:
    """(received, sent) bytes summed over the interfaces of a ``/proc/net/dev`` text, loopback excluded."""
    rx = tx = 0
    for line in text.splitlines()[2:]:  # two header lines
        name, sep, fields = line.partition(":")
        values = fields.split()
        if not sep or name.strip() == "lo" or len(values) < 9:
            continue
        rx, tx = rx + int(values[0]), tx + int(values[8])  # receive bytes, transmit bytes
    return rx, tx


def namespace_counters(pid: int) -> tuple[int, int] | None:
    """(received, sent) bytes of `pid`'s network namespace, loopback excluded; None when that namespace is the
    caller's own (a session on the worker's network: its sockets tell its traffic) or `pid` is gone."""
    try:
        theirs, ours = os.stat(f"/proc/{pid}/ns/net"), os.stat("/proc/self/ns/net")
        if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
            return None
        with open(f"/proc/{pid}/net/dev") as f:
            return parse_net_dev(f.read())
    except (OSError, ValueError):
        return None

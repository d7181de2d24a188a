"""Per-session SSH servers.

Every session gets its own SSH server on its own port, with its own config and host keys kept
in a private run directory, so sessions never share state with each other or with the host's
sshd. Each kind is an ``SshServer`` (base.py) in its own module:

* ``openssh``  - the system's ``/usr/sbin/sshd`` (openssh.py; needs root: it checks passwords and switches users),
* ``dropbear`` - ``/usr/sbin/dropbear`` (dropbear.py), light and also usable unprivileged where the host allows,
* ``builtin``  - an asyncssh server inside the calling process (builtin.py), for non-root agents where
  neither of the others can check passwords or allocate a pty,
* ``container`` - OpenSSH's sshd inside the session's container, one per connection (container.py), brought by
  berth in a read-only bundle (bundle.py); chosen by the container backend (``SessionBackend.ssh_server``).

``choose_kind`` (choice.py) picks one; ``start_ssh_server`` starts it. Every login runs ``spec.shell_wrapper``
as a forced command. The one list of allowed algorithms is in algorithms.py.
"""

from __future__ import annotations

import importlib
from typing import Callable

from berth.errors import SetupFailed

from .base import (SshServer, SshServerSpec, fingerprint, free_port, kill_tree, prepare,
                   authorized_keys_text, write_authorized_keys)
from .choice import choose_kind

# kind -> "module:class" of its SshServer; imported on first use (the built-in one loads asyncssh)
KINDS = {
    "openssh": "berth.agent.ssh.openssh:OpenSshServer",
    "dropbear": "berth.agent.ssh.dropbear:DropbearServer",
    "builtin": "berth.agent.ssh.builtin:BuiltinServer",
    "container": "berth.agent.ssh.container:ContainerSshServer",
}

__all__ = ["KINDS", "SshServer", "SshServerSpec", "choose_kind", "fingerprint", "free_port", "kill_tree",
           "server_class", "start_ssh_server", "write_authorized_keys",
           "authorized_keys_text"]


def server_class(kind: str) -> type[SshServer]:
    try:
        module, _, name = KINDS[kind].partition(":")
    except KeyError:
        raise SetupFailed(f"unknown SSH server kind {kind!r}") from None
    return getattr(importlib.import_module(module), name)


async def start_ssh_server(spec: SshServerSpec, log: Callable[[str], None]) -> SshServer:
    """Write config and keys, start the server of ``spec.kind``, wait until it listens."""
    cls = server_class(spec.kind)
    await prepare(spec)
    server = cls(spec)
    await server.start(log)
    return server

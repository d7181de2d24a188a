"""Signal dispositions every session process starts with."""

from __future__ import annotations

import signal


def undo_inherited_signal_ignores() -> None:
    """An ignored signal stays ignored across exec, and a shell cannot even trap it. An agent started under
    `nohup` would hand an ignored SIGHUP to every session shell, and a dropped connection would then leave
    its processes running. sshd resets these for its children; the built-in server's host does it here."""
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)

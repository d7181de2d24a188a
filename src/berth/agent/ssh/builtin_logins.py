"""Logins on the built-in SSH server: the shell wrapper run as a child process, on a fresh pty or on pipes,
with the environment sshd would give it; a dropped client hangs it up as sshd would.

``Logins`` is the server's ``process_factory``; it keeps what the server needs to stop it all (``children``,
``sids``) and the open terminals for notices (``terminals``)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pwd
import shutil
import signal
import struct
import termios
from typing import Awaitable, Callable

import asyncssh
import psutil

from .base import SshServerSpec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DRAIN_GRACE = 1.0  # after the child exits, how long to keep forwarding output that background jobs still write
HANGUP_GRACE = 2.0  # after the client goes away, how long SIGHUP gets before SIGKILL
SETSID = shutil.which("setsid") or "/usr/bin/setsid"


def _set_winsize(fd: int, cols: int, rows: int, xpix: int = 0, ypix: int = 0) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows or 24, cols or 80, xpix, ypix))


def _signal_group(pid: int, name: str) -> None:
    sig = getattr(signal, f"SIG{name}", None)
    if sig is None:
        return
    try:
        os.killpg(pid, sig)  # children are session (hence group) leaders: reach their whole job
    except (ProcessLookupError, PermissionError):
        pass


async def _fd_ready(fd: int, write: bool) -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    add(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        remove(fd)


async def _quietly(coro) -> None:
    """Run a pump; either end vanishing (client gone, child gone) just ends it."""
    try:
        await coro
    except (OSError, asyncssh.Error, asyncssh.DisconnectError):
        pass


async def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await _fd_ready(fd, write=True)


def _getsid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def unix_session_members(sids: set[int]) -> list[psutil.Process]:
    """Live processes in any of these Unix sessions (setsid), i.e. of these logins: catches orphans that were
    reparented away from us but kept their login session. Never our own session.

    Not "the berth session's processes" (that is ``berth.agent.proctable``, for sampling and teardown): this
    answers which processes one server's logins left, to hang them up when the client goes or the server stops."""
    sids = set(sids) - {os.getsid(0)}
    out = []
    for pid in psutil.pids() if sids else []:
        if pid != os.getpid() and _getsid(pid) in sids:
            try:
                out.append(psutil.Process(pid))
            except psutil.Error:
                pass
    return out


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Resolves ``exited`` with the status as soon as the child exits, whatever its pipes do."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__(limit=2**16, loop=loop)
        self.exited: asyncio.Future[int] = loop.create_future()

    def process_exited(self) -> None:
        status = self._transport.get_returncode()  # before super(), which may drop the transport
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(status)


class Logins:
    """Runs every login of one built-in server (its ``process_factory`` is ``serve``)."""

    def __init__(self, spec: SshServerSpec):
        self.spec = spec
        self.children: set[int] = set()
        self.sids: set[int] = set()  # every child is a session leader; its background jobs stay in its session
        self.terminals: set[asyncssh.SSHServerProcess] = set()  # pty channels, for notices
        try:
            self._shell = pwd.getpwnam(spec.user).pw_shell or "/bin/sh"
        except KeyError:
            self._shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"

    def processes(self) -> list[psutil.Process]:
        """Every live process of the logins: the children, and their sessions' members (orphans included)."""
        victims = unix_session_members(self.sids)
        for pid in list(self.children):
            try:
                victims.append(psutil.Process(pid))
            except psutil.Error:
                pass
        return victims

    def _input(self) -> None:
        hook = self.spec.on_input
        if hook is not None:
            try:
                hook()
            except Exception:  # idle detection must never break a session
                pass

    def _env(self, process: asyncssh.SSHServerProcess, command: str | None) -> dict[str, str]:
        spec = self.spec
        env = {"PATH": DEFAULT_PATH, **spec.env,
               "USER": spec.user, "LOGNAME": spec.user, "HOME": str(spec.home), "SHELL": self._shell}
        peer = process.get_extra_info("peername") or ("", 0)
        local = process.get_extra_info("sockname") or ("", 0)
        env["SSH_CLIENT"] = f"{peer[0]} {peer[1]} {local[1]}"
        env["SSH_CONNECTION"] = f"{peer[0]} {peer[1]} {local[0]} {local[1]}"
        if command is not None:
            env["SSH_ORIGINAL_COMMAND"] = command  # what sshd gives a ForceCommand
        else:
            env.pop("SSH_ORIGINAL_COMMAND", None)
        return env

    async def serve(self, process: asyncssh.SSHServerProcess) -> None:
        if process.subsystem:  # sftp is served by asyncssh before we get here
            process.stderr.write(f"subsystem {process.subsystem} is not supported\n".encode())
            process.exit(1)
            return
        env = self._env(process, process.command)
        try:
            if process.term_type is not None:
                status = await self._run_pty(process, env)
            else:
                status = await self._run_pipes(process, env)
        except Exception as e:  # report, never leave the channel hanging
            try:
                process.stderr.write(f"berth: could not start the session: {e}\n".encode())
            except Exception:
                pass
            status = 255
        if status is None:  # client went away
            return
        try:
            if status < 0:
                process.exit_with_signal(signal.Signals(-status).name[3:])
            else:
                process.exit(status)
        except Exception:
            pass

    async def _supervise(self, pid: int, exited: Awaitable[int], process: asyncssh.SSHServerProcess,
                         outputs: list[asyncio.Task], on_hangup: Callable[[], Awaitable[None]]) -> int | None:
        """Wait for the child or the client, whichever goes first; the child's status, or None."""
        self.children.add(pid)
        self.sids.add(pid)
        waiter = asyncio.ensure_future(exited)
        closed = asyncio.ensure_future(process.channel.wait_closed())
        try:
            await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():  # client disconnected: hang up like sshd would, then insist
                await on_hangup()
                _signal_group(pid, "HUP")
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), HANGUP_GRACE)
                except asyncio.TimeoutError:
                    _signal_group(pid, "KILL")
                    await waiter
                return None
            # forward what is left; background jobs holding the output open get a short grace
            await asyncio.wait(outputs, timeout=DRAIN_GRACE)
            return waiter.result()
        finally:
            self.children.discard(pid)
            closed.cancel()
            for t in outputs:
                t.cancel()

    async def _run_pipes(self, process: asyncssh.SSHServerProcess, env: dict[str, str]) -> int | None:
        loop = asyncio.get_running_loop()
        # what create_subprocess_exec does, but with our own protocol: Process.wait() also waits for
        # the pipes to close, which background jobs can hold open long after the child exited
        transport, protocol = await loop.subprocess_exec(
            lambda: _ExitProtocol(loop),
            str(self.spec.shell_wrapper), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=str(self.spec.home), start_new_session=True,
        )
        proc = asyncio.subprocess.Process(transport, protocol, loop)

        async def pump_out(src: asyncio.StreamReader, dst: asyncssh.SSHWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

        async def pump_in() -> None:
            assert proc.stdin is not None
            while True:
                try:
                    data = await process.stdin.read(65536)
                except (asyncssh.SignalReceived, asyncssh.BreakReceived) as e:
                    _signal_group(proc.pid, getattr(e, "signal", "INT"))
                    continue
                except asyncssh.TerminalSizeChanged:
                    continue
                if not data:
                    break
                self._input()
                proc.stdin.write(data)
                await proc.stdin.drain()
            proc.stdin.close()  # client EOF -> child EOF

        inp = asyncio.ensure_future(_quietly(pump_in()))
        outputs = [asyncio.ensure_future(_quietly(pump_out(proc.stdout, process.stdout))),
                   asyncio.ensure_future(_quietly(pump_out(proc.stderr, process.stderr)))]
        try:
            return await self._supervise(proc.pid, protocol.exited, process, outputs, lambda: asyncio.sleep(0))
        finally:
            inp.cancel()
            transport.close()  # lets go of pipes background jobs still hold

    async def _run_pty(self, process: asyncssh.SSHServerProcess, env: dict[str, str]) -> int | None:
        master, slave = os.openpty()
        try:
            cols, rows, xpix, ypix = process.term_size
            _set_winsize(slave, cols, rows, xpix, ypix)
            env["TERM"] = process.term_type or "dumb"
            env["SSH_TTY"] = os.ttyname(slave)
            # setsid -c makes the pty the child's controlling terminal (no preexec_fn needed)
            proc = await asyncio.create_subprocess_exec(
                SETSID, "-c", str(self.spec.shell_wrapper), stdin=slave, stdout=slave, stderr=slave,
                env=env, cwd=str(self.spec.home),
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)  # only the child holds the slave: EIO on master means it is gone
        os.set_blocking(master, False)
        closed = False

        async def hangup() -> None:
            nonlocal closed
            if not closed:
                # the pumps go first: master's fd number may be reused as soon as it is closed
                inp.cancel()
                out.cancel()
                await asyncio.gather(inp, out, return_exceptions=True)
                closed = True
                os.close(master)  # the kernel then hangs up the terminal: SIGHUP to the session

        async def pump_out() -> None:
            while True:
                try:
                    data = os.read(master, 65536)
                except BlockingIOError:
                    await _fd_ready(master, write=False)
                    continue
                except OSError:  # EIO: every slave fd is closed
                    return
                if not data:
                    return
                process.stdout.write(data)
                await process.stdout.drain()

        async def pump_in() -> None:
            while True:
                try:
                    data = await process.stdin.read(65536)
                except asyncssh.TerminalSizeChanged as e:
                    _set_winsize(master, e.width, e.height, e.pixwidth, e.pixheight)  # kernel sends SIGWINCH
                    continue
                except (asyncssh.SignalReceived, asyncssh.BreakReceived) as e:
                    _signal_group(proc.pid, getattr(e, "signal", "INT"))
                    continue
                if not data:  # like sshd: EOF does not end a pty session
                    return
                self._input()
                await _write_fd(master, data)

        inp = asyncio.ensure_future(_quietly(pump_in()))
        out = asyncio.ensure_future(_quietly(pump_out()))
        self.terminals.add(process)
        try:
            return await self._supervise(proc.pid, proc.wait(), process, [out], hangup)
        finally:
            self.terminals.discard(process)
            await asyncio.shield(hangup())

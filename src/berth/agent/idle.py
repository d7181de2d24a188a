"""Idle rules: is a session idle, for how long, when to warn its users, when to shut it down.

Pure logic over samples (``berth.agent.monitor``) so that every rule is unit-testable with plain numbers;
``warn_terminals`` is the one function here that touches the system.

A session is kept alive, at one update, by any of:
  * CPU above ``cpu_threshold`` (% of one core, summed over its processes);
  * network above ``net_threshold_mb`` MB/s (received + sent: the session's own TCP traffic, or the host's where ``ss`` is missing);
  * any GPU above ``gpu_threshold`` %: the session's own share when NVML reports it, else the device's;
  * user input less than ``input_window_s`` ago (terminal keystrokes, built-in server data, SSH socket bytes,
    a desktop viewer's keys and pointer), named by its source ("ssh input", "desktop input").
The window exists because tty atimes move at most every 8 s and samples come every 2 s; it must exceed both.

Idle time counts from the last sign of activity (the last busy update, the last input, or the start),
so "4 h idle" means 4 h after the user stopped working. The shutdown comes when idle time reaches
``max_idle_s`` or, when later, at an extension (``extend`` / ``extend_until``); one warning goes out
``warn_before_s`` before it (at most half the limit before, so short limits still get one).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from berth.metrics import MetricSample

DEFAULT_INPUT_WINDOW_S = 60.0
DEFAULT_WARN_BEFORE_S = 600.0
DEFAULT_IDLE_STATUS_AFTER_S = 60.0  # report the status "idle" only after this long, so it does not flap


@dataclass(frozen=True)
class IdleState:
    idle: bool
    idle_seconds: float  # since the last activity; 0 while active
    kept_alive_by: list[str] = field(default_factory=list)  # why it is not idle, e.g. "cpu 54% > 10%"
    warn: bool = False  # true at exactly one update per idle period (and again after an extension)
    stop: bool = False  # the idle limit (or the extension) has passed
    seconds_left: float | None = None  # until the shutdown, while idle
    show_idle: bool = False  # idle for at least idle_status_after_s: report the status "idle"


def _fmt(value: float, threshold: float) -> str:
    """Short, but with enough decimals to differ visibly from the threshold (10.4 > 10, not 10 > 10)."""
    for digits in ((0, 1, 2) if abs(value) >= 10 else (1, 2, 3)):
        text = f"{value:.{digits}f}"
        if float(text) != round(threshold, digits):
            break
    return text.rstrip("0").rstrip(".") if "." in text else text


def _epoch(value: float | datetime | None) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else value


class IdleTracker:
    def __init__(self, max_idle_s: float, cpu_threshold: float = 10.0, gpu_threshold: float = 10.0,
                 net_threshold_mb: float = 0.1, *, input_window_s: float = DEFAULT_INPUT_WINDOW_S,
                 warn_before_s: float = DEFAULT_WARN_BEFORE_S, idle_status_after_s: float = DEFAULT_IDLE_STATUS_AFTER_S,
                 started_at: float | None = None):
        if max_idle_s <= 0:
            raise ValueError("max_idle_s must be positive")
        self.max_idle_s = float(max_idle_s)
        self.cpu_threshold, self.gpu_threshold, self.net_threshold_mb = cpu_threshold, gpu_threshold, net_threshold_mb
        self.input_window_s, self.warn_before_s, self.idle_status_after_s = input_window_s, warn_before_s, idle_status_after_s
        self.extended_until: float | None = None
        self._last_active: float | None = started_at  # last update a resource rule fired (or the start)
        self._last_input: float | None = None  # newest input time seen
        self._idle_since: float | None = None
        self._warned = False
        self._gpu_noted = False
        self.state = IdleState(idle=False, idle_seconds=0.0)

    @classmethod
    def from_config(cls, config, **kw) -> IdleTracker:
        """From an app config (``berth.apps.common.CommonConfig``: max_idle_hours, idle_cpu, idle_gpu, idle_network_mb)."""
        return cls(config.max_idle_hours * 3600.0, config.idle_cpu, config.idle_gpu, config.idle_network_mb, **kw)

    @property
    def warn_lead_s(self) -> float:
        return min(self.warn_before_s, self.max_idle_s / 2)

    # --- rules -------------------------------------------------------------------------------------
    def reasons(self, sample: MetricSample | None, last_input_at: float | datetime | None, now: float,
                input_source: str = "ssh") -> list[str]:
        """What keeps the session alive right now (empty: idle); input first, named by its source."""
        out: list[str] = []
        last_input_at = _epoch(last_input_at)
        if last_input_at is not None and now - last_input_at < self.input_window_s:
            out.append(f"{input_source} input {max(0, int(now - last_input_at))} s ago")
        if sample is None:  # cannot measure: never shut a session down on missing data
            return out + ["no resource sample"]
        if sample.cpu is not None and sample.cpu > self.cpu_threshold:
            out.append(f"cpu {_fmt(sample.cpu, self.cpu_threshold)}% > {self.cpu_threshold:g}%")
        net = (sample.net_rx_mbs or 0.0) + (sample.net_tx_mbs or 0.0)
        if (sample.net_rx_mbs is not None or sample.net_tx_mbs is not None) and net > self.net_threshold_mb:
            out.append(f"network {_fmt(net, self.net_threshold_mb)} MB/s > {self.net_threshold_mb:g} MB/s")
        for gpu in sample.gpus or []:
            util = gpu.session_util if gpu.session_util is not None else gpu.util
            if util is not None and util > self.gpu_threshold:
                out.append(f"gpu {gpu.index}: {_fmt(util, self.gpu_threshold)}% > {self.gpu_threshold:g}%")
        return out

    def gpu_note(self, sample: MetricSample | None) -> str | None:
        """A console line, once, when the GPU rule cannot apply (no GPU / no NVML); None otherwise and after."""
        if self._gpu_noted or sample is None or sample.gpus:
            return None
        self._gpu_noted = True
        return f"idle: no GPU visible through NVML on this worker: the GPU threshold ({self.gpu_threshold:g}%) is ignored"

    # --- state -------------------------------------------------------------------------------------
    def deadline(self, now: float) -> float:
        """When the session would be shut down if nothing happens from now on."""
        base = (self._idle_since if self._idle_since is not None else now) + self.max_idle_s
        return max(base, self.extended_until) if self.extended_until is not None else base

    def update(self, sample: MetricSample | None, last_input_at: float | datetime | None, now: float,
               input_source: str = "ssh") -> IdleState:
        reasons = self.reasons(sample, last_input_at, now, input_source)
        last_input_at = _epoch(last_input_at)
        if last_input_at is not None and (self._last_input is None or last_input_at > self._last_input):
            self._last_input = last_input_at
            if self._idle_since is not None and last_input_at > self._idle_since:  # input we saw late
                self._idle_since, self._warned = min(now, last_input_at), False
        if reasons:
            if any(not r.startswith(f"{input_source} input") for r in reasons):
                self._last_active = now  # input alone: idle time will count from the input itself
            self._idle_since, self._warned = None, False
            self.state = IdleState(idle=False, idle_seconds=0.0, kept_alive_by=reasons)
            return self.state
        if self._idle_since is None:  # idle from the last evidence of activity, never later than now
            evidence = [t for t in (self._last_active, self._last_input) if t is not None]
            self._idle_since = min(now, max(evidence)) if evidence else now
        left = self.deadline(now) - now
        warn = not self._warned and left <= self.warn_lead_s
        self._warned = self._warned or warn
        idle_seconds = now - self._idle_since
        self.state = IdleState(idle=True, idle_seconds=idle_seconds, warn=warn, stop=left <= 0,
                               seconds_left=max(0.0, left), show_idle=idle_seconds >= self.idle_status_after_s)
        return self.state

    def extend(self, seconds: float, now: float) -> float:
        """Push the shutdown deadline back by `seconds` (a fresh warning will come before the new one)."""
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        self.extended_until = max(self.deadline(now), now) + seconds
        self._warned = False
        return self.extended_until

    def extend_until(self, until: float | datetime | None) -> None:
        """No idle shutdown before `until` (the server's record of `berth sessions extend`). Idempotent."""
        until = _epoch(until)
        if until is not None and (self.extended_until is None or until > self.extended_until):
            self.extended_until = until
            self._warned = False


def duration_text(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def warning_message(state: IdleState, session_id: str) -> str:
    return (f"this session has been idle for {duration_text(state.idle_seconds)} and shuts down in "
            f"{duration_text(state.seconds_left or 0)}; keep it with: berth sessions extend {session_id} --hours 2")


def warn_terminals(ttys: Iterable[str], message: str) -> int:
    """Write a warning line to each terminal (/dev/pts/N); how many got it. Never blocks, never raises:
    a terminal that closed or is stopped (^S) just misses the line."""
    line = f"\r\n\a*** berth: {message} ***\r\n".encode()
    written = 0
    for path in sorted(set(ttys)):
        if not path.startswith("/dev/pts/"):
            continue
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.write(fd, line)
            written += 1
        except OSError:  # EAGAIN (output stopped), EIO (hung up)
            pass
        finally:
            os.close(fd)
    return written

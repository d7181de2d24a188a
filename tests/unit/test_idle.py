"""Idle rules (berth.agent.idle): thresholds, input window, reset, warning, stop, extension, GPU absent."""

from __future__ import annotations

import os
import pty
from datetime import datetime, timezone

import pytest

from berth.agent.idle import IdleTracker, duration_text, warn_terminals, warning_message
from berth.apps import SshSessionConfig
from berth.metrics import GpuSample, MetricSample

T = 1_800_000_000.0  # an arbitrary "now" in epoch seconds


def sample(cpu=0.0, rx=0.0, tx=0.0, gpus=None) -> MetricSample:
    return MetricSample(ts=datetime.fromtimestamp(T, timezone.utc), cpu=cpu, net_rx_mbs=rx, net_tx_mbs=tx, gpus=gpus,
                        gpu_available=gpus is not None)


def gpu(index=0, util=0.0, session_util=None) -> GpuSample:
    return GpuSample(index=index, util=util, session_util=session_util, mem_used_mb=1.0, mem_total_mb=80.0)


def tracker(max_idle_s=3600.0, **kw) -> IdleTracker:
    return IdleTracker(max_idle_s, cpu_threshold=10, gpu_threshold=10, net_threshold_mb=0.1, **kw)


def run_idle(t: IdleTracker, start: float, seconds: float, step: float = 2.0, s: MetricSample | None = None):
    """Feed idle samples every `step` seconds; every state."""
    states, now = [], start
    while now <= start + seconds:
        states.append(t.update(s or sample(), None, now))
        now += step
    return states


@pytest.mark.parametrize(("s", "reason"), [
    (sample(cpu=54), "cpu 54% > 10%"),
    (sample(cpu=10.4), "cpu 10.4% > 10%"),
    (sample(rx=3.0, tx=0.1), "network 3.1 MB/s > 0.1 MB/s"),
    (sample(tx=0.15), "network 0.15 MB/s > 0.1 MB/s"),
    (sample(gpus=[gpu(0, 5), gpu(1, 80)]), "gpu 1: 80% > 10%"),
])
def test_each_threshold_keeps_the_session_alive(s, reason):
    state = tracker().update(s, None, T)
    assert not state.idle and state.idle_seconds == 0 and state.kept_alive_by == [reason]
    assert not state.warn and not state.stop


@pytest.mark.parametrize("s", [sample(cpu=10), sample(cpu=9.9), sample(rx=0.05, tx=0.05), sample(gpus=[gpu(0, 10)]), sample()])
def test_at_or_below_every_threshold_is_idle(s):
    state = tracker().update(s, None, T)
    assert state.idle and state.kept_alive_by == []


def test_several_reasons_are_all_listed():
    state = tracker().update(sample(cpu=200, rx=1, gpus=[gpu(0, 90), gpu(1, 95)]), T - 3, T)
    assert state.kept_alive_by == ["ssh input 3 s ago", "cpu 200% > 10%", "network 1 MB/s > 0.1 MB/s",
                                   "gpu 0: 90% > 10%", "gpu 1: 95% > 10%"]


def test_gpu_uses_the_sessions_own_share_when_known():
    busy_elsewhere = sample(gpus=[gpu(0, util=95, session_util=0)])
    assert tracker().update(busy_elsewhere, None, T).idle
    ours = sample(gpus=[gpu(0, util=95, session_util=40)])
    assert tracker().update(ours, None, T).kept_alive_by == ["gpu 0: 40% > 10%"]


def test_input_window():
    t = tracker(input_window_s=60)
    assert t.update(sample(), T, T + 12).kept_alive_by == ["ssh input 12 s ago"]
    assert t.update(sample(), T, T + 59.5).kept_alive_by == ["ssh input 59 s ago"]
    state = t.update(sample(), T, T + 60)  # the window is half-open
    assert state.idle and state.idle_seconds == 60  # idle since the input, not since the window closed
    assert t.update(sample(), datetime.fromtimestamp(T + 61, timezone.utc), T + 63).kept_alive_by == ["ssh input 2 s ago"]
    assert tracker(input_window_s=10).update(sample(), T, T + 12).idle


def test_idle_seconds_count_from_the_last_activity_and_reset_on_activity():
    t = tracker()
    assert t.update(sample(cpu=50), None, T).idle_seconds == 0
    assert t.update(sample(), None, T + 2).idle_seconds == 2  # idle since the last busy update
    assert t.update(sample(), None, T + 100).idle_seconds == 100
    state = t.update(sample(cpu=50), None, T + 102)
    assert not state.idle and state.idle_seconds == 0
    assert t.update(sample(), None, T + 104).idle_seconds == 2
    assert t.update(sample(), T + 110, T + 200).idle_seconds == 90  # input seen late still counts from when it was


def test_first_update_idle_counts_from_start_or_now():
    assert tracker().update(sample(), None, T).idle_seconds == 0
    assert tracker(started_at=T - 30).update(sample(), None, T).idle_seconds == 30


def test_warn_once_then_stop_at_the_limit():
    t = tracker(max_idle_s=3600, warn_before_s=600)
    states = run_idle(t, T, 3700, step=10)
    warned = [i for i, s in enumerate(states) if s.warn]
    assert len(warned) == 1 and states[warned[0]].idle_seconds == 3000
    stops = [s for s in states if s.stop]
    assert stops[0].idle_seconds == 3600 and stops[0].seconds_left == 0
    assert all(not s.stop for s in states if s.idle_seconds < 3600)
    assert states[warned[0]].seconds_left == 600


def test_warning_rearms_after_activity():
    t = tracker(max_idle_s=100, warn_before_s=10)
    assert sum(s.warn for s in run_idle(t, T, 95)) == 1
    t.update(sample(cpu=99), None, T + 96)
    assert sum(s.warn for s in run_idle(t, T + 98, 95)) == 1


def test_short_limits_still_warn_before_stopping():
    t = tracker(max_idle_s=60, warn_before_s=600)  # lead capped at half the limit
    states = run_idle(t, T, 70)
    assert [s.idle_seconds for s in states if s.warn] == [30]
    assert next(s for s in states if s.stop).idle_seconds == 60


def test_extend_pushes_the_deadline_and_warns_again():
    t = tracker(max_idle_s=3600, warn_before_s=600)
    states = run_idle(t, T, 3500, step=10)
    assert sum(s.warn for s in states) == 1
    t.extend(7200, now=T + 3500)  # deadline T+3600 -> T+10800
    assert t.extended_until == T + 3600 + 7200
    later = run_idle(t, T + 3510, 7300, step=10)
    assert not any(s.stop for s in later if s.idle_seconds < 10800)
    assert [s.idle_seconds for s in later if s.warn] == [10200]
    assert next(s for s in later if s.stop).idle_seconds == 10800


def test_extend_until_from_the_server_is_a_floor_and_idempotent():
    t = tracker(max_idle_s=100, warn_before_s=10)
    t.extend_until(datetime.fromtimestamp(T + 500, timezone.utc))
    states = run_idle(t, T, 600)
    assert next(s for s in states if s.stop).idle_seconds == 500
    assert [s.idle_seconds for s in states if s.warn] == [490]
    t2 = tracker(max_idle_s=100)
    t2.extend_until(T + 50)  # earlier than the idle limit: no effect
    assert next(s for s in run_idle(t2, T, 200) if s.stop).idle_seconds == 100
    t3 = tracker(max_idle_s=100, warn_before_s=10)
    t3.extend_until(T + 300)
    run_idle(t3, T, 295)
    t3.extend_until(T + 300)  # the same value again (every watch reply): no second warning
    assert not any(s.warn for s in run_idle(t3, T + 296, 3))


def test_fractional_hours_from_the_config():
    cfg = SshSessionConfig(max_idle_hours=0.25, idle_cpu=5, idle_gpu=20, idle_network_mb=0.5)
    t = IdleTracker.from_config(cfg, warn_before_s=60)
    assert (t.max_idle_s, t.cpu_threshold, t.gpu_threshold, t.net_threshold_mb) == (900, 5, 20, 0.5)
    assert t.update(sample(cpu=6), None, T).kept_alive_by == ["cpu 6% > 5%"]
    states = run_idle(t, T + 1, 1000, step=1)
    assert next(s for s in states if s.stop).idle_seconds == 900
    t2 = IdleTracker.from_config(cfg)
    run_idle(t2, T, 500)
    t2.extend(1.5 * 3600, now=T + 500)  # --hours 1.5 pushes the deadline (T + 900) by 5400 s
    assert t2.extended_until == T + 900 + 5400
    assert next(s for s in run_idle(t2, T + 502, 7000) if s.stop).idle_seconds == 6300


def test_gpu_absent_is_ignored_with_one_note():
    t = tracker()
    state = t.update(sample(cpu=0), None, T)
    assert state.idle
    note = t.gpu_note(sample())
    assert note and "GPU threshold (10%) is ignored" in note
    assert t.gpu_note(sample()) is None
    assert tracker().gpu_note(sample(gpus=[gpu()])) is None


def test_missing_sample_never_shuts_down():
    t = tracker(max_idle_s=10)
    states = [t.update(None, None, T + i) for i in range(30)]
    assert not any(s.idle or s.stop for s in states) and states[0].kept_alive_by == ["no resource sample"]


def test_cpu_unknown_first_sample_is_not_activity():
    s = MetricSample(ts=datetime.now(timezone.utc), cpu=None)
    assert tracker().update(s, None, T).idle


def test_show_idle_after_a_grace_period():
    t = tracker(idle_status_after_s=60)
    states = run_idle(t, T, 100, step=10)
    assert [s.show_idle for s in states] == [False] * 6 + [True] * 5


def test_bad_arguments():
    with pytest.raises(ValueError):
        IdleTracker(0)
    with pytest.raises(ValueError):
        tracker().extend(0, T)


def test_warning_text():
    t = tracker(max_idle_s=4 * 3600)
    state = run_idle(t, T, 4 * 3600 - 600, step=60)[-1]
    assert state.warn
    text = warning_message(state, "abc123")
    assert "idle for 3 h 50 min" in text and "shuts down in 10 min" in text and "berth sessions extend abc123" in text
    assert duration_text(45) == "45 s"


def test_warn_terminals_writes_to_a_real_pty():
    master, slave = pty.openpty()
    try:
        path = os.ttyname(slave)
        assert warn_terminals([path, "/dev/pts/999999", "/etc/passwd"], "idle for 3 h") == 1
        os.set_blocking(master, False)
        assert b"*** berth: idle for 3 h ***" in os.read(master, 4096)
    finally:
        os.close(master)
        os.close(slave)

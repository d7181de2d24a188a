"""GPU utilization and memory through NVML (nvidia-ml-py), degrading to "no GPU" when NVML is absent.

Per-process attribution: ``nvmlDeviceGetComputeRunningProcesses`` lists the processes holding memory
on a device (their memory gives ``session_mem_mb``), and ``nvmlDeviceGetProcessUtilization`` gives SM %
per process for the last sampling window (``session_util``) on drivers that support it. In containers
NVML may report host pids that match none of ours; the device-level figures are still right.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from berth.metrics import GpuSample

log = logging.getLogger("berth.monitor")
MB = 1_000_000


def _load_nvml() -> Any:
    try:
        import pynvml
    except ImportError:  # nvidia-ml-py is a dependency, but a stripped install must still sample
        return None
    return pynvml


class GpuReader:
    """One per process; NVML is initialised once. ``nvml`` is the pynvml module (a parameter for tests)."""

    def __init__(self, nvml: Any = None):
        self._nvml = nvml if nvml is not None else _load_nvml()
        self._handles: list[Any] = []
        self._names: list[str | None] = []
        self._last_util_ts: dict[int, int] = {}
        self.reason: str | None = None
        self.available = False
        if self._nvml is None:
            self.reason = "nvidia-ml-py is not installed"
            return
        try:
            self._nvml.nvmlInit()
            count = self._nvml.nvmlDeviceGetCount()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no GPU here
            self.reason = f"NVML not available ({exc})"
            return
        for h in self._handles:
            try:
                name = self._nvml.nvmlDeviceGetName(h)
                self._names.append(name.decode() if isinstance(name, bytes) else str(name))
            except Exception:
                self._names.append(None)
        self.available = bool(self._handles)
        if not self.available:
            self.reason = "NVML reports no GPU"

    def read(self, session_pids: set[int] | None = None) -> list[GpuSample] | None:
        """Every GPU's figures; with session_pids, also the share of those processes. None without NVML."""
        if not self.available:
            return None
        nvml, out = self._nvml, []
        for index, handle in enumerate(self._handles):
            gpu = GpuSample(index=index, name=self._names[index])
            try:
                gpu.util = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                gpu.mem_used_mb, gpu.mem_total_mb = mem.used / MB, mem.total / MB
            except Exception as exc:  # a device that fell off the bus: report it without figures
                log.debug("gpu %d: %s", index, exc)
            if session_pids is not None:
                gpu.session_mem_mb = self._session_memory(handle, session_pids)
                gpu.session_util = self._session_util(index, handle, session_pids)
            out.append(gpu)
        return out

    def _session_memory(self, handle: Any, pids: set[int]) -> float | None:
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception:
            return None
        return sum((p.usedGpuMemory or 0) for p in procs if p.pid in pids) / MB

    def _session_util(self, index: int, handle: Any, pids: set[int]) -> float | None:
        since = self._last_util_ts.get(index, int((time.time() - 10) * 1e6))
        try:
            samples = self._nvml.nvmlDeviceGetProcessUtilization(handle, since)
        except Exception as exc:
            # NOT_FOUND: no process ran a kernel since `since`, which is 0 %; anything else: unsupported
            return 0.0 if type(exc).__name__ == "NVMLError_NotFound" else None
        latest: dict[int, tuple[int, float]] = {}  # the newest sample per pid only
        for s in samples:
            if s.pid in pids and (s.pid not in latest or s.timeStamp > latest[s.pid][0]):
                latest[s.pid] = (s.timeStamp, float(s.smUtil))
            self._last_util_ts[index] = max(self._last_util_ts.get(index, 0), int(s.timeStamp))
        return min(100.0, sum(u for _, u in latest.values()))


def summarize(gpus: list[GpuSample] | None) -> tuple[float | None, float | None, float | None]:
    """(mean utilization, memory used, memory total) over the GPUs, for the wide sample row."""
    if not gpus:
        return None, None, None
    utils = [g.util for g in gpus if g.util is not None]
    used = [g.mem_used_mb for g in gpus if g.mem_used_mb is not None]
    total = [g.mem_total_mb for g in gpus if g.mem_total_mb is not None]
    return (sum(utils) / len(utils) if utils else None, sum(used) if used else None, sum(total) if total else None)

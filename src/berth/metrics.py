"""Wire types of resource metrics: what supervisors and agents send, what the query route answers.

Kept apart from ``schemas.py`` (shared by everyone) because server, agent and CLI all use these and
nothing else needs them. Units, once for all: CPU is "% of one core" summed over the processes, so
100 = one busy core whatever the machine's size (a 64-core worker at full load reads 6400); memory in
MB (RSS); disk and network in MB/s (1 MB = 10^6 bytes); GPU utilization in %.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from berth.fields import Count, Finite, Line

# The numeric series of a sample, in the order tables and charts show them, with their units.
SERIES: dict[str, str] = {
    "cpu": "%", "mem_mb": "MB", "disk_read_mbs": "MB/s", "disk_write_mbs": "MB/s", "net_rx_mbs": "MB/s",
    "net_tx_mbs": "MB/s", "gpu_util": "%", "gpu_mem_used_mb": "MB", "gpu_mem_total_mb": "MB",
}
MAX_BATCH = 1000  # samples per POST
MAX_POINTS = 10_000  # buckets per query


class GpuSample(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    index: int = Field(ge=0, le=4096)
    name: Line | None = Field(None, max_length=256)
    util: Finite | None = Field(None, ge=0, description="Device utilization % (every process on the device)")
    mem_used_mb: Finite | None = Field(None, ge=0)
    mem_total_mb: Finite | None = Field(None, ge=0)
    session_util: Finite | None = Field(None, ge=0, description="SM % of the session's own processes, when the driver reports per-process use")
    session_mem_mb: Finite | None = Field(None, ge=0, description="GPU memory of the session's processes; null when NVML cannot list processes")


class MetricSample(BaseModel):
    """One sample of a session (its own processes) or of a worker (the whole host)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # ignore: newer agents may send more

    ts: datetime
    cpu: Finite | None = Field(None, ge=0, description="CPU, % of one core summed over the processes (100 = one busy core)")
    mem_mb: Finite | None = Field(None, ge=0, description="Resident memory (RSS, summed: shared pages count once per process)")
    disk_read_mbs: Finite | None = Field(None, ge=0)
    disk_write_mbs: Finite | None = Field(None, ge=0)
    net_rx_mbs: Finite | None = Field(None, ge=0)
    net_tx_mbs: Finite | None = Field(None, ge=0)
    gpu_util: Finite | None = Field(None, ge=0, description="Mean device utilization over the GPUs")
    gpu_mem_used_mb: Finite | None = Field(None, ge=0, description="Device memory used, summed over the GPUs")
    gpu_mem_total_mb: Finite | None = Field(None, ge=0)
    gpus: list[GpuSample] | None = Field(None, max_length=256, description="Per GPU; null when NVML is not available")
    gpu_available: bool = Field(False, description="NVML answered (false: no GPU, no driver, or no library)")
    network_scope: Literal["host", "session"] = Field(
        "host", description="session: the session's own TCP traffic (its sockets, loopback peers excluded); "
                            "host: the worker's interfaces (loopback excluded), where per-session figures are not available")
    processes: Count | None = Field(None, description="How many processes the sample covers")

    def points(self) -> int:
        """How many series values this sample carries (what ingestion rates count)."""
        return sum(getattr(self, name) is not None for name in SERIES)


class MetricsBatch(BaseModel):
    samples: list[MetricSample] = Field(max_length=MAX_BATCH)


class Ingested(BaseModel):
    samples: int
    points: int


class Series(BaseModel):
    unit: str
    min: list[float | None]
    mean: list[float | None]
    max: list[float | None]


class MetricsView(BaseModel):
    """Downsampled series. Buckets are aligned on the epoch: bucket k covers [k*bucket_s, (k+1)*bucket_s) (the
    first and last hold only samples inside [start, end)); `t` holds the start of every bucket that has samples
    (empty buckets are left out) and each series and `n` are aligned with it. With points=1, one bucket covers
    exactly [start, end) and t = [start]."""

    start: datetime
    end: datetime
    bucket_s: float
    points: int = Field(description="Most buckets asked for")
    samples: int = Field(description="Raw samples in [start, end)")
    t: list[datetime]
    n: list[int] = Field(default_factory=list, description="Samples per bucket, aligned with t")
    series: dict[str, Series]
    latest: MetricSample | None = Field(None, description="The newest sample in the range, with per-GPU detail")
    network_scope: str = Field("host", description="network_scope of the newest sample in the range")


class ExtendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    hours: float = Field(gt=0, le=24 * 365, description="Postpone the idle shutdown by this long (added to any earlier extension)")

"""What the agent tells a supervisor about the worker, typed: written into the session's assignment.json.

A subset of :class:`~berth.settings.AgentSettings` (the defaults live there only); a supervisor started by an
older agent, whose file lacks a field, gets the setting's default.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from berth.settings import AgentSettings

class SupervisorContext(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    server: str
    backend: str = AgentSettings.model_fields["backend"].default
    homes_dir: Path = AgentSettings.model_fields["homes_dir"].default
    runtime_dir: Path = AgentSettings.model_fields["runtime_dir"].default
    advertise_host: str | None = None
    bind_host: str = AgentSettings.model_fields["bind_host"].default
    python: str = AgentSettings.model_fields["python"].default
    sync_minutes: float = AgentSettings.model_fields["sync_minutes"].default
    workspace_max_gb: float = AgentSettings.model_fields["workspace_max_gb"].default
    idle_input_window_s: float = AgentSettings.model_fields["idle_input_window_s"].default
    idle_warn_before_s: float = AgentSettings.model_fields["idle_warn_before_s"].default
    metrics_sample_s: float = AgentSettings.model_fields["metrics_sample_s"].default
    metrics_post_s: float = AgentSettings.model_fields["metrics_post_s"].default
    status_report_s: float = AgentSettings.model_fields["status_report_s"].default
    setup_timeout_s: float = AgentSettings.model_fields["setup_timeout_s"].default
    container_cli: str | None = None
    container_docker_host: str | None = None
    container_runtime: str | None = AgentSettings.model_fields["container_runtime"].default
    container_image: str | None = None
    container_desktop_runtime: str | None = AgentSettings.model_fields["container_desktop_runtime"].default
    container_run_args: list[str] = []
    container_subuid_start: int = AgentSettings.model_fields["container_subuid_start"].default
    container_subuid_count: int = AgentSettings.model_fields["container_subuid_count"].default
    container_cpus: float | None = None
    container_memory: str | None = None
    container_network: str | None = None

    @classmethod
    def of(cls, settings: AgentSettings) -> SupervisorContext:
        return cls.model_validate({name: getattr(settings, name) for name in cls.model_fields})

"""Options every app shares (seed: name, project, queue, idle limit and thresholds, tags, restore)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from berth.schemas import App

CONFIG_SCHEMA_VERSION = 1
DEFAULT_PROJECT = "Interactive Session"


class CommonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    app: ClassVar[App]

    name: str | None = Field(None, max_length=128, description="Session name; generated when empty")
    project: str = Field(DEFAULT_PROJECT, min_length=1, max_length=128, description="Project the session belongs to")
    tags: list[str] = Field(default_factory=list, description="Tags (a list, or a comma separated string)")
    queue: str = Field("default", min_length=1, max_length=128, description="Queue an agent takes the session from")
    max_idle_hours: float = Field(4.0, gt=0, le=24 * 365, description="Idle time after which the session shuts down")
    restore_session: str | None = Field(None, max_length=64, description="Session ID whose workspace is restored")
    idle_network_mb: float = Field(0.1, ge=0, description="Network MB/s under which the session counts as idle")
    idle_cpu: float = Field(10.0, ge=0, le=100, description="CPU %% under which the session counts as idle")
    idle_gpu: float = Field(10.0, ge=0, le=100, description="GPU %% under which the session counts as idle")

    @field_validator("tags", mode="before")
    @classmethod
    def _split_tags(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("tags")
    @classmethod
    def _clean_tags(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for tag in value:
            tag = tag.strip()
            if "," in tag:
                raise ValueError("a tag cannot contain a comma")
            if tag and tag not in out:
                out.append(tag)
        return out

    @field_validator("name", "restore_session", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("project", "queue", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

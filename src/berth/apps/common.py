"""Options every app shares (seed: name, project, queue, idle limit and thresholds, tags, restore)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, field_validator

from berth.fields import Line, Name, WireModel, check_line
from berth.schemas import App

CONFIG_SCHEMA_VERSION = 1
DEFAULT_PROJECT = "Interactive Session"


class CommonConfig(WireModel):  # numbers are finite (WireModel); names are one line, projects and queues addressable
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    app: ClassVar[App]
    launch_form: ClassVar[tuple] = ()  # the web form's groups and labels (see ssh_session.LAUNCH_FORM)
    # A machine of its own (the seed's VM Remote Desktop): container workers give it their VM-like runtime
    # (BERTH_AGENT_CONTAINER_DESKTOP_RUNTIME: sysbox-runc where installed).
    vm_like: ClassVar[bool] = False

    name: Line | None = Field(None, max_length=128, description="Session name; generated when empty")
    project: Name = Field(DEFAULT_PROJECT, description="Project the session belongs to")
    tags: list[Annotated[Line, Field(max_length=64)]] = Field(default_factory=list, max_length=64,
                                                             description="Tags (a list, or a comma separated string)")
    queue: Name = Field("default", description="Queue an agent takes the session from")
    max_idle_hours: float = Field(4.0, gt=0, le=24 * 365, description="Idle time after which the session shuts down")
    restore_session: Line | None = Field(None, max_length=64, description="Session ID whose workspace is restored")
    idle_network_mb: float = Field(0.1, ge=0, le=1e6, description="Network MB/s under which the session counts as idle")
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


WORKSPACE_HELP = "Persistent workspace path inside the session's home: relative to it, or ~/…"


def check_workspace(value: str) -> str:
    """The persistent workspace of every app: inside the session's home, always, stored as ``~`` or ``~/a/b``
    (relative paths are relative to the home)."""
    value = check_line(value.strip())
    if not value:
        raise ValueError("must not be empty (e.g. ~/workspace)")
    if value.startswith("/"):
        raise ValueError("must be inside the session's home: a relative path or ~/… (absolute paths are not allowed)")
    parts = value.split("/")
    if parts[0].startswith("~"):
        if parts[0] != "~":
            raise ValueError("only ~ (the session's home) may start the path")
        parts = parts[1:]
    if ".." in parts:
        raise ValueError("must not contain '..' (the workspace stays inside the session's home)")
    return "/".join(["~", *(p for p in parts if p not in ("", "."))])

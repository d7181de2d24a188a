"""The Remote Desktop app: a graphical desktop in the browser (or SSH access) on a worker.

One field per option of the seed's launch form. The worker side is ``berth.agent.apps.remote_desktop`` (Xvnc,
openbox and xterm, or an SSH server); users reach the desktop through the gateway (``/s/<id>/``).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from berth.schemas import App

from .common import WORKSPACE_HELP, CommonConfig, check_workspace

# Dashboard items of the seed, in its order.
DASHBOARD_FIELDS = (
    "status", "idle_seconds", "restored_from", "id", "links.browser", "links.direct",
    "metrics.cpu", "metrics.gpu", "metrics.memory", "console",
)

# The launch form, grouped and labelled as the seed's configuration section (see ssh_session.LAUNCH_FORM).
LAUNCH_FORM = (
    ("Application Session Name", False, (("name", "Application Session Name"),)),
    ("Type", False, (("type", "Type"),)),
    ("Application instance project", False, (("project", "Application instance project"),)),
    ("Queue", False, (("queue", "Queue"),)),
    ("Idle Time Limit", False, (("max_idle_hours", "Idle Time Limit (hours)"),)),
    ("Environment Variables", False, (("env", "Environment Variables"),)),
    ("Advanced Options", True, (
        ("tags", "Application Session Tags"), ("restore_session", "Restore application state from a previous session ID"),
        ("workspace", "Persistent Workspace Path"),
        ("idle_network_mb", "Idle Network Threshold (MB)"), ("idle_cpu", "Idle CPU Threshold (%)"),
        ("idle_gpu", "Idle GPU Threshold (%)"))),
)

MAX_ENV = 100
MAX_ENV_NAME = 128
MAX_ENV_VALUE = 4096
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")  # one line: tabs are fine, newlines are not
# Set by berth or the login itself: a session's own value would break its setup or hide berth's.
RESERVED_ENV = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "DISPLAY", "XAUTHORITY",
                          "LD_PRELOAD", "LD_LIBRARY_PATH"})
RESERVED_ENV_PREFIX = "BERTH_"


def env_pairs(value: Any) -> Any:
    """`env` as people write it: a dict, a list of "KEY=VALUE" strings (the CLI's repeated --env), or one string of
    such lines (the form; blank lines are skipped). Anything else is left to the type check."""
    if isinstance(value, str):
        value = [line.removesuffix("\r") for line in value.split("\n") if line.strip()]
    if not isinstance(value, list):
        return value
    out: dict[str, Any] = {}
    for number, item in enumerate(value, 1):
        if not isinstance(item, str):
            raise ValueError("each entry must be a KEY=VALUE string")
        if "=" not in item:  # not echoed: it may be a secret value typed on a line of its own
            raise ValueError(f"entry {number} is not KEY=VALUE")
        key, val = item.split("=", 1)
        key = key.strip()
        if key in out:
            raise ValueError(f"{key[:MAX_ENV_NAME]!r} is set twice")
        out[key] = val
    return out


class RemoteDesktopConfig(CommonConfig):
    app: ClassVar[App] = App.remote_desktop
    launch_form: ClassVar[tuple] = LAUNCH_FORM
    vm_like: ClassVar[bool] = True

    type: Literal["desktop", "ssh"] = Field(
        "desktop", description="How you connect: desktop (a remote desktop in the browser) or ssh (SSH access)",
        json_schema_extra={"choices": {"desktop": "Remote Desktop", "ssh": "SSH"}})
    env: dict[str, str] = Field(default_factory=dict,
                                description="Environment variables set in the session: KEY=VALUE, one a line")
    workspace: str = Field("~/workspace", min_length=1, max_length=1024, description=WORKSPACE_HELP)

    @field_validator("env", mode="before")
    @classmethod
    def _parse_env(cls, value: Any) -> Any:
        return env_pairs(value)

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: dict[str, str]) -> dict[str, str]:
        # Values are never echoed: a variable may hold a token.
        if len(value) > MAX_ENV:
            raise ValueError(f"at most {MAX_ENV} variables (got {len(value)})")
        for key, val in value.items():
            if len(key) > MAX_ENV_NAME or not _ENV_NAME.match(key):
                raise ValueError(f"{key[:MAX_ENV_NAME]!r} is not a variable name (letters, digits and _, "
                                 f"not starting with a digit, at most {MAX_ENV_NAME} characters)")
            if key in RESERVED_ENV or key.upper().startswith(RESERVED_ENV_PREFIX):
                raise ValueError(f"{key!r} is reserved (berth sets it for the session): choose another name")
            if len(val) > MAX_ENV_VALUE:
                raise ValueError(f"the value of {key!r} is longer than {MAX_ENV_VALUE} characters")
            if _ENV_VALUE_BAD.search(val):
                raise ValueError(f"the value of {key!r} must be one line (no newlines, NUL or control characters)")
        return value

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, value: str) -> str:
        return check_workspace(value)

"""The SSH Session app: a prepared dev environment with a detached SSH server.

One field per option of the seed's launch form; secrets (git credentials) travel separately in
``LaunchSecrets`` and never appear in a configuration or an export.
"""

from __future__ import annotations

import re
import shlex
from typing import Annotated, Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator

from berth.fields import Line, Text
from berth.schemas import App

from . import container_args as cargs
from .common import WORKSPACE_HELP, CommonConfig, check_workspace

# Dashboard items of the seed, in its order (rendered by the web UI and `sessions show`).
DASHBOARD_FIELDS = (
    "status", "idle_seconds", "restored_from", "id", "ssh.host:ssh.port", "ssh.user", "ssh.password", "ssh.command",
    "metrics.cpu", "metrics.network", "metrics.disk", "metrics.memory", "metrics.gpu", "metrics.gpu_memory", "console",
)

# The launch form, grouped and labelled as the seed's configuration section (the web UI renders it; defaults and
# help come from the fields). (group, collapsed under "Advanced Options", ((field, label), ...)); fields not
# listed here are shown under Advanced Options with their own names.
LAUNCH_FORM = (
    ("Git", False, (("git_repo", "Repository"), ("git_branch", "Branch"), ("git_commit", "Commit"))),
    ("Docker", False, (("image", "Image"), ("container_args", "Docker Arguments"), ("init_script", "Init Script"))),
    ("Extra Packages", False, (("packages", "Extra Packages"),)),
    ("Persistent Workspace Path", False, (("workspace", "Persistent Workspace Path"),)),
    ("Queue", False, (("queue", "Queue"),)),
    ("Maximum idle time", False, (("max_idle_hours", "Maximum idle time (hours)"),)),
    ("Interactive Session Name", False, (("name", "Interactive Session Name"),)),
    ("Advanced Options", True, (
        ("project", "Interactive Session Project"), ("tags", "Interactive Session Tags"),
        ("restore_session", "Restore Interactive Workspace ID"),
        ("dropbear", "Use DropBear SSH server instead of OpenSSH server"),
        ("idle_network_mb", "Idle Network Threshold (MB)"), ("idle_cpu", "Idle CPU Threshold (%)"),
        ("idle_gpu", "Idle GPU Threshold (%)"), ("sync_minutes", "Workspace sync interval (minutes)"),
        ("workspace_excludes", "Workspace excludes"), ("workspace_max_gb", "Largest workspace stored (GB)"))),
)

_GIT_REF = re.compile(r"^[A-Za-z0-9._/@{}~^+-]+$")


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)")
_SCP_PASSWORD = re.compile(r"^[^/@:]+:[^/@]*@")  # user:secret@host:path (scp syntax has no password)


def has_credentials(url: str) -> bool:
    """A password or token in a git URL: ``https://TOKEN@host/…``, ``https://user:pass@host/…``. A user name alone
    on SSH (``git@host:org/repo.git``, ``ssh://git@host/…``) is not a credential."""
    match = _SCHEME.match(url)
    if match is None:
        return bool(_SCP_PASSWORD.match(url))
    scheme, authority = match.group(1).lower(), match.group(2)
    if "@" not in authority:
        return False
    userinfo = authority.rsplit("@", 1)[0]
    return not (scheme in ("ssh", "git+ssh", "ssh+git") and ":" not in userinfo)


class SshSessionConfig(CommonConfig):
    app: ClassVar[App] = App.ssh_session
    launch_form: ClassVar[tuple] = LAUNCH_FORM

    git_repo: Line | None = Field(None, max_length=2048, description="Git repository cloned into the workspace (no credentials in it: "
                                                                    "they go in --git-token-file / --git-ssh-key)")
    git_branch: Line | None = Field(None, max_length=255, description="Branch to check out")
    git_commit: Line | None = Field(None, max_length=255, description="Commit to check out")
    image: Line | None = Field(None, max_length=512, description="Container image the session runs in (only workers offering "
                                                                 "the container backend take it), e.g. ubuntu:24.04")
    container_args: Text | None = Field(None, max_length=4096, description="Extra options of the container's run, e.g. --cpus 2 "
                                        "-e KEY=VALUE --shm-size 1g; options that break the session's isolation are refused")
    init_script: Text | None = Field(None, max_length=256 * 1024, description="Bash script run before the SSH server starts")
    packages: list[Annotated[Line, Field(max_length=1024)]] = Field(default_factory=list, max_length=1000,
                                                                    description="Extra Python packages, pip requirement syntax")
    workspace: str = Field("~/workspace", min_length=1, max_length=1024,
                           description=WORKSPACE_HELP)
    dropbear: bool = Field(False, description="Use Dropbear instead of OpenSSH (required when not root)")
    sync_minutes: float | None = Field(None, gt=0, le=24 * 60, description="Minutes between workspace syncs (agent default: 10)")
    workspace_excludes: list[Annotated[Line, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=1000, description="Extra gitignore-style patterns not stored with the workspace")
    workspace_max_gb: float | None = Field(None, gt=0, le=1e6, description="Largest workspace stored (agent default applies when unset)")

    @field_validator("workspace_excludes", mode="before")
    @classmethod
    def _split_excludes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p.strip() for p in value.replace("\n", ",").split(",") if p.strip()]
        return value

    @field_validator("git_repo", "git_branch", "git_commit", "image", "container_args", "init_script", mode="before")
    @classmethod
    def _blank_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        return None if value is None else cargs.check_image(value)

    @field_validator("container_args")
    @classmethod
    def _container_args(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or ("image" not in info.data and info.context):  # a bad image is reported on its own
            return value
        return cargs.validate(value, info.data.get("image"), info.context)

    @field_validator("git_repo")
    @classmethod
    def _repo(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if value.startswith("-") or any(c.isspace() for c in value):
            raise ValueError("not a git repository URL")
        if has_credentials(value):  # the message must not echo the URL: it holds the secret
            raise ValueError("credentials must not be part of the URL (they would be stored and shown): pass a token with "
                             "--git-token-file (or BERTH_GIT_TOKEN; API: secrets.git_token) or a key with --git-ssh-key "
                             "(API: secrets.git_ssh_key)")
        return value

    @field_validator("git_branch", "git_commit")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if value.startswith("-") or not _GIT_REF.match(value):
            raise ValueError("not a valid git ref")
        return value

    @field_validator("packages", mode="before")
    @classmethod
    def _split_packages(cls, value: Any) -> Any:
        if isinstance(value, str):
            lines = [ln.split("#", 1)[0].strip() for ln in value.replace("\r", "").split("\n")]
            out: list[str] = []
            for line in lines:
                out.extend(shlex.split(line)) if line else None
            return out
        return value

    @field_validator("packages")
    @classmethod
    def _check_packages(cls, value: list[str]) -> list[str]:
        for req in value:
            if not req.strip() or req.strip().startswith("-"):
                raise ValueError(f"{req!r} is not a requirement (options are not allowed)")
        return [r.strip() for r in value]

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, value: str) -> str:
        return check_workspace(value)

"""The files the agent leaves in a session's directory for its supervisor (all private to root/the agent)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from berth.agent.context import SupervisorContext
from berth.ids import new_password
from berth.private_files import ensure_private_dir, open_private
from berth.schemas import Assignment

ASSIGNMENT_FILE = "assignment.json"  # the assignment without secrets, the agent's context, the session password
SECRETS_FILE = "secrets.json"        # launch secrets (git credentials): removed once the app is prepared
PID_FILE = "supervisor.pid"


@dataclass
class SessionFiles:
    context: SupervisorContext
    assignment: Assignment  # with its secrets filled in from SECRETS_FILE
    password: str
    secrets: list[str]      # every secret value, for the console's redaction


def read_session_files(session_dir: Path) -> SessionFiles:
    data = json.loads((session_dir / ASSIGNMENT_FILE).read_text())
    assignment = Assignment.model_validate(data["assignment"])
    secrets_path = session_dir / SECRETS_FILE
    secrets = json.loads(secrets_path.read_text()) if secrets_path.exists() else {}
    assignment.secrets = assignment.secrets.model_validate(secrets)
    return SessionFiles(context=SupervisorContext.model_validate(data["agent"]), assignment=assignment,
                        password=data["password"], secrets=[data["password"], *(v for v in secrets.values() if v)])


def write_session_files(session_dir: Path, assignment: Assignment, context: SupervisorContext) -> None:
    """What a supervisor reads at start, in a private directory; the launch secrets in a file of their own."""
    ensure_private_dir(session_dir)
    public = assignment.model_copy(update={"secrets": type(assignment.secrets)()})
    _write_private(session_dir / ASSIGNMENT_FILE, {"assignment": public.model_dump(mode="json"),
                                                   "agent": context.model_dump(mode="json"), "password": new_password()})
    _write_private(session_dir / SECRETS_FILE, assignment.secrets.model_dump(exclude_none=True))


def _write_private(path: Path, data: dict) -> None:
    with open_private(path, "w") as f:
        json.dump(data, f)

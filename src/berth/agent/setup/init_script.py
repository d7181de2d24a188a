"""The user's init script, run with bash in the session before its servers start."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from berth.errors import SetupFailed

from .commands import Emit, private_dir, session_run_as, write_private

if TYPE_CHECKING:
    from berth.agent.backends.base import SessionBackend


async def run_init_script(script: str, *, cwd: Path, env: dict[str, str], backend: SessionBackend, emit: Emit,
                          scratch: Path) -> None:
    """Run the script as the session user, streaming its output lines (a background job's lines keep coming
    after it returns). The script runs as written: '#' at line start is a bash comment."""
    run_as = session_run_as(backend)
    with private_dir(scratch, run_as, backend.host.setup_dir) as private:
        path = private / "init.sh"
        write_private(path, script, 0o600, run_as)
        status, _ = await backend.run_in_session(["/bin/bash", str(path)], env=env, cwd=cwd, on_line=emit)
    if status < 0:
        raise SetupFailed(f"init script was killed by signal {-status}")
    if status:
        raise SetupFailed(f"init script exited with status {status}")

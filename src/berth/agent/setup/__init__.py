"""Setup steps of a session's environment, one module per job: ``python_env`` (venv and packages), ``git``
(clone or fetch), ``init_script``; ``commands`` holds what they share (running a command, private files).

Every step takes the session's backend, after ``prepare()``: it runs its commands through
``backend.run_in_session`` (as the session user, in the session), so a git hook or a planted symlink in a
restored workspace never runs or is followed as root. The login files are ``berth.agent.login_files``.
"""

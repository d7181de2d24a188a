"""The one table of session status changes."""

from __future__ import annotations

import pytest

from berth.errors import Conflict
from berth.schemas import SessionStatus as S
from berth.server.db.models import Session
from berth.server.services.sessions import TRANSITIONS, check_transition, sources, transition


def _row(status: S) -> Session:
    return Session(id="s1", status=status.value, secrets={"git_token": "sealed"})


def test_the_table_refuses_an_illegal_transition():
    row = _row(S.stopping)
    with pytest.raises(Conflict, match="stopping -> active is not a valid transition"):
        transition(row, S.active)
    assert row.status == S.stopping.value  # nothing changed


@pytest.mark.parametrize("final", [S.stopped, S.failed])
def test_a_final_status_is_never_left(final):
    assert TRANSITIONS[final] == frozenset()
    for new in S:
        with pytest.raises(Conflict):
            check_transition("s1", final, new)


def test_every_status_that_is_not_final_may_fail_and_none_returns_to_queued():
    assert all(S.failed in TRANSITIONS[s] for s in S if not s.is_final)
    assert sources(S.queued) == []
    assert sources(S.starting) == [S.queued.value]  # only a claim starts a session


def test_ending_a_session_drops_its_credentials_and_stamps_the_end():
    row = _row(S.active)
    transition(row, S.failed, "worker lost")
    assert (row.status, row.error, row.secrets) == ("failed", "worker lost", {})
    assert row.stopped_at is not None and row.updated_at == row.stopped_at


def test_becoming_active_stamps_the_start_once():
    row = _row(S.starting)
    transition(row, S.active)
    started = row.started_at
    assert started is not None
    transition(row, S.idle)
    transition(row, S.active)
    assert row.started_at == started

"""The supervisor's console keeps lines in order and hides secrets, whoever triggers a flush."""

import asyncio

from berth.agent.console import Console
from berth.errors import ServerUnavailable


class RecordingTransport:
    """Stands in for the HTTP transport only: the first post is slow, later ones fast, to provoke reordering."""

    def __init__(self, fail_first: bool = False):
        self.received: list[str] = []
        self.calls = 0
        self.fail_first = fail_first

    async def post_events(self, session_id, events):
        self.calls += 1
        call = self.calls
        if call == 1:
            await asyncio.sleep(0.2)
            if self.fail_first:
                raise ServerUnavailable("server restarting")
        self.received.extend(e.message for e in events)


def test_overlapping_flushes_deliver_lines_in_order():
    async def scenario():
        transport = RecordingTransport()
        console = Console(transport, "s1", flush_every=0.0)
        console("first")
        slow = asyncio.create_task(console.flush())
        await asyncio.sleep(0.05)  # the first post is in flight
        console("second")
        await console.flush()
        await slow
        return transport.received

    assert asyncio.run(scenario()) == ["first", "second"]


def test_failed_post_keeps_lines_and_their_order():
    async def scenario():
        transport = RecordingTransport(fail_first=True)
        console = Console(transport, "s1", flush_every=0.0)
        console("first")
        slow = asyncio.create_task(console.flush())
        await asyncio.sleep(0.05)
        console("second")
        await slow
        await console.flush()
        return transport.received

    assert asyncio.run(scenario()) == ["first", "second"]


def test_secrets_and_url_credentials_are_redacted():
    console = Console(RecordingTransport(), "s1", secrets=["hunter2-password"])
    assert console.redact("pw hunter2-password ok") == "pw **** ok"
    assert console.redact("cloning https://user:tok@example.com/r.git") == "cloning https://example.com/r.git"
    console.add_secret("abc")
    assert console.redact("pw abc") == "pw abc"  # secrets under 4 characters are not masked (every "a"...)

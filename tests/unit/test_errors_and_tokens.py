from __future__ import annotations

import asyncio

from berth.errors import BerthError, Conflict, Forbidden, InvalidInput, NotFound, Unauthorized, from_http
from berth.server.services import security
from berth.server.services.notify import Notifier


def test_error_tree_round_trips_through_http():
    for cls in (InvalidInput, Unauthorized, Forbidden, NotFound, Conflict):
        err = cls("something wrong", field="x.y")
        back = from_http(cls.http_status, err.to_body())
        assert type(back) is cls and back.message == "something wrong" and back.field == "x.y"
    assert type(from_http(500, None)) is BerthError


def test_fastapi_validation_body_is_understood():
    err = from_http(422, {"detail": [{"loc": ["body", "config", "queue"], "msg": "Field required"}]})
    assert isinstance(err, InvalidInput) and err.field == "config.queue" and "config.queue" in err.message


def test_log_message_is_separate():
    err = Forbidden("not allowed", log_message="user bob denied on project x")
    assert str(err) == "not allowed" and err.log_message.startswith("user bob")


def test_tokens_are_random_prefixed_and_hashed():
    a, b = security.new_token("api"), security.new_token("api")
    assert a != b and a.startswith("bu_") and len(a) > 40
    assert security.token_kind(a) == "api" and security.token_kind(security.new_token("session")) == "session"
    assert security.hash_token(a) != a and len(security.hash_token(a)) == 64


async def test_passwords_use_argon2():
    h = await security.hash_password("correct horse")
    assert h.startswith("$argon2")
    assert await security.verify_password(h, "correct horse") and not await security.verify_password(h, "wrong")
    assert not await security.verify_password("not-a-hash", "x")


async def test_password_hash_costs_come_from_the_settings_and_old_hashes_still_verify():
    from berth.settings import ServerSettings

    fields = ServerSettings.model_fields  # the tests' environment sets cheap ones (conftest.py)
    time_cost, memory_kib = fields["password_hash_time_cost"].default, fields["password_hash_memory_kib"].default
    assert (time_cost, memory_kib) == (3, 65536)  # RFC 9106's low-memory profile
    current = ServerSettings(data_dir="/nonexistent-berth")
    try:
        security.configure_password_hashing(time_cost, memory_kib)
        before = await security.hash_password("correct horse")
        assert "$m=65536,t=3," in before
        security.configure_password_hashing(1, 64)
        cheap = await security.hash_password("correct horse")
        assert "$m=64,t=1," in cheap
        assert await security.verify_password(before, "correct horse") and await security.verify_password(cheap, "correct horse")
    finally:
        security.configure_password_hashing(current.password_hash_time_cost, current.password_hash_memory_kib)


def test_notifier_wakes_waiter_before_poll_interval():
    async def go():
        n = Notifier()
        state = {"ready": False}

        async def check():
            return "done" if state["ready"] else None

        async def later():
            await asyncio.sleep(0.05)
            state["ready"] = True
            n.notify("t")

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        asyncio.create_task(later())
        result = await n.wait_for(["t"], check, timeout=5, poll_interval=2)
        return result, loop.time() - t0

    result, elapsed = asyncio.run(go())
    assert result == "done" and elapsed < 1


def test_notifier_times_out_with_none():
    async def go():
        async def check():
            return None
        return await Notifier().wait_for(["t"], check, timeout=0.2, poll_interval=0.05)

    assert asyncio.run(go()) is None

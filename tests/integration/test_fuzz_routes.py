"""No input to any route gives a 5xx.

Requests are generated from the running server's own OpenAPI document (every route, its path and query
parameters, its body schema) with hostile values mixed in at every level: NaN, ±Infinity, 1e308, huge ints,
NUL and other control characters, lone surrogates, very long strings, wrong types, missing and unknown fields,
path parameters with odd characters. Each request is sent as an admin, a user without admin rights (with a
project of their own), a worker (agent) or a session's supervisor, or with no token; any answer >= 500 fails.
Two tests per route: hypothesis-generated requests, and a systematic pass that puts each hostile value of
its type into each body field (the app configuration's fields included) and each parameter, one at a time.

Bounded: FUZZ_EXAMPLES examples per route (derandomized when CI=true), so the module runs well under a minute;
BERTH_FUZZ_EXAMPLES=500 (without CI=true) digs deeper with a fresh seed each run.
"""

from __future__ import annotations

import json
import math
import os
from datetime import timezone
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berth.apps import SshSessionConfig

FUZZ_EXAMPLES = int(os.environ.get("BERTH_FUZZ_EXAMPLES", "30"))  # more for a deeper local run

HOSTILE_VALUES = [
    math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 10 ** 30, -(10 ** 30), 2 ** 63, 2 ** 31, -1, 0, True, None,
    "", " ", "\x00", "a\x00b", "\x1b[31mred", "line\nbreak", "\ud800", "x" * 5000, "../../etc/passwd", "a/b", "%00", "~",
    "ü" * 50, "1e308", "NaN", "-1", [], {}, [None], {"a": math.nan}, [[[[[]]]]], "9999-12-31T23:59:59", "0001-01-01T00:00:00",
]
hostile = st.sampled_from(HOSTILE_VALUES)
hostile_numbers = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 1e20, 10 ** 30, -(10 ** 30), 2 ** 63,
                                   2 ** 31, -1, 0, 5e-324])
odd_text = st.one_of(st.text(max_size=30), st.sampled_from(["\x00", "a/b", "..", ".", "%", "?x=1", "#", "a\\b", " x ",
                                                            "x" * 3000, "\x7f", "\ud800", "0" * 64, "1" * 20]))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), hostile)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)


def with_hostile(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly well-formed, sometimes hostile: enough valid structure to get past the first check."""
    return st.one_of(strategy, strategy, strategy, hostile)


class SchemaStrategies:
    def __init__(self, document: dict):
        self.components = document.get("components", {}).get("schemas", {})

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def value(self, schema: dict, depth: int = 0) -> st.SearchStrategy:
        schema = self.resolve(schema or {})
        if depth > 4:
            return json_scalars
        for key in ("anyOf", "oneOf"):
            if key in schema:  # each branch mixes in hostile values already
                return st.one_of([self.value(s, depth + 1) for s in schema[key]])
        if "allOf" in schema:
            return self.value(schema["allOf"][0], depth + 1)
        if "enum" in schema:
            return with_hostile(st.sampled_from(schema["enum"]))
        if "const" in schema:
            return with_hostile(st.just(schema["const"]))
        kind = schema.get("type")
        if kind == "string":
            if schema.get("format") == "date-time":
                base = st.datetimes(timezones=st.none() | st.just(timezone.utc)).map(lambda d: d.isoformat())
            elif "pattern" in schema:
                base = st.from_regex(schema["pattern"], fullmatch=True) | odd_text
            else:
                base = st.text(max_size=min(schema.get("maxLength", 40), 40)) | odd_text
        elif kind == "integer":
            base = st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum")) | hostile_numbers
        elif kind == "number":
            base = st.floats(min_value=schema.get("minimum"), max_value=schema.get("maximum"), allow_nan=False) | hostile_numbers
        elif kind == "boolean":
            base = st.booleans()
        elif kind == "null":
            base = st.none()
        elif kind == "array":
            items = schema.get("prefixItems")
            if items:
                base = st.tuples(*[self.value(i, depth + 1) for i in items]).map(list)
            else:
                base = st.lists(self.value(schema.get("items", {}), depth + 1), max_size=min(schema.get("maxItems", 4), 4))
        elif kind == "object" or "properties" in schema:
            base = self.object(schema, depth)
        else:
            base = json_values
        return with_hostile(base)

    def object(self, schema: dict, depth: int) -> st.SearchStrategy:
        props = schema.get("properties", {})
        required = [k for k in schema.get("required", []) if k in props]
        fixed = {k: self.value(props[k], depth + 1) for k in required}
        optional = {k: self.value(v, depth + 1) for k, v in props.items() if k not in required}
        base = st.fixed_dictionaries(fixed, optional=optional)
        extra = st.dictionaries(st.text(max_size=10), json_values, max_size=2)
        missing = st.fixed_dictionaries({}, optional={**fixed, **optional})
        if not props:  # dict[str, Any]
            return extra
        return st.one_of(base, base, base, missing, st.tuples(base, extra).map(lambda t: {**t[1], **t[0]}))


@pytest.fixture(scope="module")
def world(server_only):
    """Principals and real ids to aim at: admin, a non-admin user with a project, a worker, sessions."""
    s = server_only
    s.api("POST", "/api/v1/users", json={"username": "fuzzer", "password": "fuzzer-password"})
    user = httpx.post(s.url + "/api/v1/auth/login", json={"username": "fuzzer", "password": "fuzzer-password"}).json()["token"]
    s.api("POST", "/api/v1/projects", token=user, json={"name": "fuzz-lab"})
    worker = s.api("POST", "/api/v1/workers/register", token=s.agent_token, json={
        "name": "fuzz-worker", "hostname": "fuzz", "queues": ["fuzz-q"], "cpus": 2, "memory_bytes": 1 << 30,
        "run_as": "root", "is_root": True})
    admin_session = s.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"queue": "default"}})["id"]
    document = s.api("GET", "/openapi.json")
    world = {"stack": s, "user": user, "worker_id": worker["worker_id"], "worker": worker["token"],
             "admin_session": admin_session, "openapi": document, "claimed": []}
    yield world  # the sessions it launched and claimed are left as they are: no agent runs them (Stack.stop)


def fresh_supervisor(world) -> tuple[str, str]:
    """A session claimed by the fuzz worker: its id and token (a new one per route, since the fuzz may end it)."""
    s = world["stack"]
    s.api("POST", "/api/v1/sessions", token=world["user"], json={"app": "ssh-session", "config": {"queue": "fuzz-q", "project": "fuzz-lab"}})
    while True:
        assignment = s.api("POST", f"/api/v1/workers/{world['worker_id']}/claim", token=world["worker"])
        if assignment is None:
            raise AssertionError("nothing to claim")
        world["claimed"].append((assignment["session_id"], assignment["session_token"]))
        if assignment["config"]["queue"] == "fuzz-q":
            return assignment["session_id"], assignment["session_token"]


def operations():
    # Collected at import time from the app factory: the same document the server serves (checked below).
    from berth.server.app import create_app
    from berth.settings import ServerSettings

    document = create_app(ServerSettings(data_dir="/nonexistent-berth-fuzz")).openapi()
    return [(method.upper(), path) for path, methods in sorted(document["paths"].items()) for method in sorted(methods)]


OPERATIONS = operations()


def test_operations_match_the_served_document(world):
    served = {(m.upper(), p) for p, ms in world["openapi"]["paths"].items() for m in ms}
    assert served == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_input_gives_a_5xx(world, method, path):
    stack, document = world["stack"], world["openapi"]
    strategies = SchemaStrategies(document)
    operation = document["paths"][path][method.lower()]
    session_id, session_token = fresh_supervisor(world)
    tokens = {"admin": stack.token, "user": world["user"], "worker": world["worker"], "session": session_token, "none": None}
    known = {
        "session_id": st.sampled_from([session_id, world["admin_session"], "000000000000"]),
        "worker_id": st.just(world["worker_id"]), "name": st.sampled_from(["fuzz-lab", "Interactive Session"]),
        "digest": st.just("0" * 64), "snapshot_id": st.just("0" * 12), "token_id": st.just("0" * 12),
    }
    config = SchemaStrategies({"components": {"schemas": SshSessionConfig.model_json_schema().get("$defs", {})}}).value(
        SshSessionConfig.model_json_schema())

    def param_strategy(param: dict) -> st.SearchStrategy:
        name, schema = param["name"], param.get("schema", {})
        if param["in"] == "path":
            return st.one_of(known.get(name, odd_text), known.get(name, odd_text), odd_text).map(_quote)
        if name == "wait":  # long polls: only values that answer at once
            return st.sampled_from([0, "0", "nan", "inf", "-inf", -1, "1e308", "x", ""])
        return strategies.value(schema)

    body_strategy = st.none()
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        body_schema = strategies.resolve(content["application/json"].get("schema", {}))
        props = dict(body_schema.get("properties", {}))
        if "config" in props or "overrides" in props:  # the app configuration: aim at its real fields
            key = "config" if "config" in props else "overrides"
            body_strategy = st.one_of(strategies.value(body_schema), st.tuples(strategies.value(body_schema), config).map(
                lambda t: {**t[0], key: t[1]} if isinstance(t[0], dict) else t[0]))
        elif path.endswith("/configs/validate"):
            body_strategy = st.one_of(st.fixed_dictionaries({"berth_config": with_hostile(st.just(1)),
                                                             "app": with_hostile(st.just("ssh-session")), "config": config}),
                                      strategies.value(body_schema))
        else:
            body_strategy = strategies.value(body_schema)
        body_strategy = body_strategy.map(lambda b: ("json", json.dumps(b, allow_nan=True)))
    elif content:
        body_strategy = st.binary(max_size=2048).map(lambda b: ("binary", b))

    params = operation.get("parameters", [])
    client = httpx.Client(base_url=stack.url, timeout=60)
    sent = []

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(data=st.data())
    def run(data):
        who = data.draw(st.sampled_from(principals_for(path)) | st.sampled_from(list(tokens)), label="as")
        url = path
        query: list[str] = []
        for param in params:
            if param["in"] == "path":
                url = url.replace("{" + param["name"] + "}", data.draw(param_strategy(param), label=param["name"]))
            elif param["in"] == "query" and data.draw(st.booleans(), label=f"send {param['name']}"):
                value = data.draw(param_strategy(param), label=param["name"])
                for item in value if isinstance(value, list) else [value]:
                    query.append(f"{param['name']}={_quote(item if isinstance(item, str) else json.dumps(item, allow_nan=True))}")
        body = data.draw(body_strategy, label="body")
        headers = {"Authorization": f"Bearer {tokens[who]}"} if tokens[who] else {}
        kwargs = {}
        if body is not None:
            kind, payload = body
            headers["Content-Type"] = "application/json" if kind == "json" else "application/octet-stream"
            kwargs["content"] = payload.encode("utf-8", "surrogatepass") if kind == "json" else payload
        if query:
            url += "?" + "&".join(query)
        r = client.request(method, url, headers=headers, **kwargs)
        sent.append(r.status_code)
        _track_claims(world, path, r)
        assert r.status_code < 500, (f"{method} {url} {query} as {who} -> {r.status_code} {r.text[:500]}\n"
                                     f"body: {str(body)[:800]}\nserver log: {_log_tail(stack)}")

    try:
        run()
    finally:
        client.close()
    assert len(sent) >= (FUZZ_EXAMPLES if params or content else len(tokens)), sent  # the examples really ran


def principals_for(path: str) -> list[str]:
    """Who a route is for (drawn more often, so examples get past authentication to the code that parses them)."""
    if "/supervisor/" in path or path.startswith("/api/v1/workspaces/sessions/"):
        return ["session"]
    if path.startswith("/api/v1/workers/{worker_id}") and not path.endswith("/metrics") or path.endswith("/register"):
        return ["worker", "admin"]
    if path == "/api/v1/workers/{worker_id}/metrics":
        return ["worker", "user"]
    return ["admin", "user"]


# --- every field, every hostile value, systematically -----------------------------------------

HOSTILE_BY_TYPE = {
    "number": [math.nan, math.inf, -math.inf, 1e308, -1e308, 10 ** 30, 2 ** 63, -1, "x", None, [], {}],
    "integer": [math.nan, math.inf, 1e308, 10 ** 30, -(10 ** 30), 2 ** 63, 2 ** 31, -1, 1.5, "x", None, []],
    "string": ["\x00", "a\x00b", "\ud800", "\x1b[31m", "a\nb", "x" * 5000, "a/b", "..", "", " x", "%00", 1e308, math.nan, 10 ** 30, None, [], {}],
    "boolean": ["x", 2, math.nan, None],
    "array": [[math.nan], ["\x00"], [None], "x", {}, None],
    "object": [{"\x00": 1}, {"a": math.nan}, [], "x", None],
}


def sample_of(strategies: SchemaStrategies, schema: dict, config_schema: dict | None = None, name: str = ""):
    """A minimal well-formed value, to carry one hostile leaf at a time."""
    schema = strategies.resolve(schema or {})
    if name in ("config", "overrides") and config_schema is not None:
        return {}
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return sample_of(strategies, next((b for b in schema[key] if b.get("type") != "null"), schema[key][0]))
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if schema.get("format") == "date-time":
        return "2024-01-01T00:00:00+00:00"
    if kind == "object" or "properties" in schema:
        return {k: sample_of(strategies, v, config_schema, k) for k, v in schema.get("properties", {}).items() if k in schema.get("required", [])}
    return {"string": "x", "integer": 1, "number": 1.0, "boolean": False, "array": [], "null": None}.get(kind, {})


def leaves(strategies: SchemaStrategies, schema: dict, config_schema: dict, path: tuple = (), depth: int = 0):
    """(path in the body, JSON type) of every field, the app configuration's own fields included."""
    schema = strategies.resolve(schema or {})
    if depth > 4:
        return
    for key in ("anyOf", "oneOf"):
        if key in schema:
            branch = next((b for b in schema[key] if strategies.resolve(b).get("type") != "null"), schema[key][0])
            yield from leaves(strategies, branch, config_schema, path, depth)
            return
    kind = schema.get("type")
    if path and path[-1] in ("config", "overrides"):
        schema, kind = config_schema, "object"
    if kind == "object" or "properties" in schema:
        if path:
            yield path, "object"
        for key, sub in schema.get("properties", {}).items():
            yield from leaves(strategies, sub, config_schema, path + (key,), depth + 1)
    elif kind == "array":
        yield path, "array"
        items = schema.get("prefixItems") or [schema.get("items", {})]
        for i, sub in enumerate(items):
            yield from leaves(strategies, sub, config_schema, path + (i,), depth + 1)
    elif kind in HOSTILE_BY_TYPE:
        yield path, kind


def with_leaf(body, path: tuple, value):
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        inner = body[0] if isinstance(body, list) and body else {}
        return [with_leaf(inner, rest, value)]
    out = dict(body) if isinstance(body, dict) else {}
    out[head] = with_leaf(out.get(head, {} if rest and not isinstance(rest[0], int) else []), rest, value)
    return out


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_field_refuses_hostile_values_without_a_5xx(world, method, path):
    """Each body field, query and path parameter of the route, one hostile value at a time, as the route's callers."""
    stack, document = world["stack"], world["openapi"]
    strategies = SchemaStrategies(document)
    operation = document["paths"][path][method.lower()]
    session_id, session_token = fresh_supervisor(world)
    tokens = {"admin": stack.token, "user": world["user"], "worker": world["worker"], "session": session_token}
    config_schema = SshSessionConfig.model_json_schema()
    good_path = {"session_id": session_id, "worker_id": world["worker_id"], "name": "fuzz-lab", "digest": "0" * 64,
                 "snapshot_id": "0" * 12, "token_id": "0" * 12}
    params = operation.get("parameters", [])
    content = operation.get("requestBody", {}).get("content", {})
    body_schema = content.get("application/json", {}).get("schema")
    cases: list[tuple[dict, list, object]] = []  # (path values, query, body)
    base_body = sample_of(strategies, body_schema, config_schema) if body_schema else None
    if body_schema:
        for leaf, kind in leaves(strategies, body_schema, config_schema):
            cases += [({}, [], with_leaf(base_body, leaf, v)) for v in HOSTILE_BY_TYPE[kind]]
        cases += [({}, [], v) for v in HOSTILE_BY_TYPE["object"] + HOSTILE_BY_TYPE["array"]]
    for param in params:
        kind = strategies.resolve(param.get("schema", {})).get("type") or "string"
        values = HOSTILE_BY_TYPE["string"] if param["in"] == "path" else HOSTILE_BY_TYPE.get(kind, HOSTILE_BY_TYPE["string"])
        for v in values:
            if param["in"] == "path":
                cases.append(({param["name"]: v}, [], base_body))
            elif param["name"] != "wait" or not isinstance(v, (int, float)) or not 0 < v < 1e9:
                cases.append(({}, [f"{param['name']}={_quote(v if isinstance(v, str) else json.dumps(v, allow_nan=True))}"], base_body))
    who = principals_for(path)[0]  # the generated test above covers the other callers
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        for path_values, query, body in cases:
            url = path
            for param in params:
                if param["in"] == "path":
                    url = url.replace("{" + param["name"] + "}", _quote(path_values.get(param["name"], good_path.get(param["name"], "x"))))
            if query:
                url += "?" + "&".join(query)
            headers = {"Authorization": f"Bearer {tokens[who]}"}
            kwargs = {}
            if body is not None and body_schema:
                headers["Content-Type"] = "application/json"
                kwargs["content"] = json.dumps(body, allow_nan=True).encode()
            elif content:
                kwargs["content"] = b"\0" * 64
            r = client.request(method, url, headers=headers, **kwargs)
            _track_claims(world, path, r)
            assert r.status_code < 500, (f"{method} {url} as {who} -> {r.status_code} {r.text[:500]}\n"
                                         f"body: {str(body)[:800]}\nserver log: {_log_tail(stack)}")


def _track_claims(world, path: str, r: httpx.Response) -> None:
    """Sessions the fuzz itself claimed (a clone lands in the fuzz queue) are ended at teardown too."""
    if path.endswith("/claim") and r.status_code == 200:
        world["claimed"].append((r.json()["session_id"], r.json()["session_token"]))


def _quote(value: object) -> str:
    """Percent-encode anything, lone surrogates included (sent as the invalid UTF-8 they would be)."""
    return quote(str(value).encode("utf-8", "surrogatepass"), safe="")


def _log_tail(stack) -> str:
    try:
        return (stack.tmp / "server.log").read_text(errors="replace")[-3000:]
    except OSError:
        return "(no log)"

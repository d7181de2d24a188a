"""Workspace snapshots (issue #3): berth next to tar+zstd and restic, measured in the same run.

    .venv/bin/python bench/workspace.py [--size-mb 1024] [--runs 2] [--dir /var/tmp/berth-bench-ws]

The workspace looks like an ML user's (as issue #3 describes it): ~20,000 small source files (~80 MB), a git
repository with history, a 64 MB compressible metrics CSV, and checkpoints/data files of 50-200 MB that
compress poorly (random bytes) making up the rest: ~1 GiB in all (everything scales with --size-mb). berth goes through the real path: snapshot_to_server / restore_from_server against a real
`berth server` on a port, with the files read and written by the as_session helper as a supervisor does it
(issue #7), run in a child process whose peak RSS is read back (the helper's own memory is not in that figure). Each figure is the median
of --runs repetitions, each against a fresh chunk namespace (project) and a fresh restic repository;
the file cache is warm for every tool alike.

Targets: full <= 1.0x tar|zstd -1 -T0; incremental (1 % of files changed) <= 0.25x restic's;
restore <= 1.0x zstd -d|tar -x; peak RSS (VmHWM of the process taking the snapshot) <= 200 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_WORDS = ("import def return self class for in if else elif while with as try except raise yield lambda None True "
          "False data model tensor loss optimizer batch epoch train eval torch numpy config path logger").split()


# --- the workspace ---------------------------------------------------------------------------------

def _source(rng: random.Random, size: int) -> bytes:
    lines, n = [], 0
    while n < size:
        line = "    " * rng.randint(0, 3) + " ".join(rng.choices(_WORDS, k=rng.randint(2, 10))) + f"  # {rng.randint(0, 10**6)}\n"
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()


def build_workspace(root: Path, size_mb: int) -> None:
    marker = root / ".bench-workspace"
    if marker.exists() and marker.read_text() == str(size_mb):
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    scale = size_mb / 1024
    rng = random.Random(3)
    # ~20,000 small source files (~4 KB on average) in a package tree
    blocks = [_source(rng, 16384) for _ in range(64)]
    for i in range(max(20, int(20000 * scale))):
        d = root / "src" / f"pkg{i % 40}" / f"mod{(i // 40) % 25}"
        d.mkdir(parents=True, exist_ok=True)
        block = blocks[i % len(blocks)]
        start = rng.randrange(0, len(block) - 8200)
        (d / f"file{i}.py").write_bytes(f"# file {i}\n".encode() + block[start:start + rng.randint(100, 8000)])
    # a git repository with history
    repo = root / "repo"
    (repo / "lib").mkdir(parents=True)
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@x", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@x")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for c in range(30):
        for j in range(20):
            (repo / "lib" / f"m{(c * 7 + j) % 200}.py").write_bytes(_source(rng, 3000))
        subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True, env=env)
        subprocess.run(["git", "-C", str(repo), "commit", "-qm", f"change {c}"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "gc", "-q"], check=True, env=env)
    # a compressible metrics log (CSV)
    rows = [f"{rng.randint(0, 10**6)},{rng.random():.6f},{rng.choice(_WORDS)},{rng.randint(0, 9)}\n" for _ in range(50000)]
    block = "".join(rows).encode()
    (root / "logs").mkdir()
    with open(root / "logs" / "metrics.csv", "wb") as f:
        for _ in range(max(1, int(64 * scale))):
            f.write(block[rng.randrange(0, 1000):][:1 << 20])
    # checkpoints and data files of 50-200 MB that compress poorly (random bytes) make up the rest
    (root / "checkpoints").mkdir()
    left = size_mb * 1024 * 1024 - sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    sizes = [200, 200, 150, 100, 100, 50, 50, 50]
    i = 0
    while left > 0:
        n = min(left, max(1 << 20, int(sizes[i % len(sizes)] * scale) << 20))
        with open(root / "checkpoints" / f"epoch{i}.pt", "wb") as f:
            for off in range(0, n, 1 << 20):
                f.write(rng.randbytes(min(1 << 20, n - off)))
        left -= n
        i += 1
    marker.write_text(str(size_mb))


def change_one_percent(root: Path, seed: int) -> int:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".bench-workspace" and ".git" not in p.parts)
    rng = random.Random(seed)
    picked = rng.sample(files, max(1, len(files) // 100))
    for p in picked:
        with open(p, "ab") as f:
            f.write(f"# changed {seed}\n".encode())
    return len(picked)


def settle(root: Path) -> None:
    """Before each timed step: the workspace in the page cache, and no dirty pages left from the previous
    step (whose writeback would otherwise slow down whichever tool runs next)."""
    subprocess.run(f"tar -cf - -C {root} . | cat > /dev/null", shell=True, check=True)
    os.sync()


def timed(cmd: str, env: dict | None = None) -> float:
    os.sync()
    t = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


# --- berth, in a child process (for its peak RSS) ---------------------------------------------------

def child(args: list[str]) -> None:
    import functools

    from berth.agent.as_session import Identity, run_task
    from berth.agent.sync import SessionEngine
    from berth.client import BerthClient
    from berth.workspace.sync import restore_from_server, snapshot_to_server

    op, server, token, session, path, state = args
    # A supervisor's path: the files are read and written by the as_session helper, the network stays here.
    engine = SessionEngine(functools.partial(run_task, Identity(os.getuid(), os.getgid())))

    async def go() -> dict:
        async with BerthClient(server, token, timeout=120) as client:
            t = time.perf_counter()
            if op == "snapshot":
                info = await snapshot_to_server(client, session, Path(path), state_dir=Path(state), emit=lambda line: None,
                                                engine=engine)
            else:
                info = await restore_from_server(client, session, Path(path), emit=lambda line: None, engine=engine)
            return {"seconds": time.perf_counter() - t, "files": info.files, "bytes_total": info.bytes_total,
                    "bytes_sent": info.bytes_sent}

    result = asyncio.run(go())
    # VmHWM (peak RSS of this process image); ru_maxrss would keep the forked parent's pre-exec peak.
    status = Path("/proc/self/status").read_text()
    result["rss_mb"] = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    print(json.dumps(result))


def berth_child(op: str, stack, token: str, session: str, path: Path, state: Path) -> dict:
    os.sync()
    t = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", op, stack.url, token, session, str(path), str(state)],
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - t
    return result


def session_token(stack, project: str) -> tuple[str, str]:
    """A session in `project`, claimed by a registered (fake) worker: the token a supervisor would hold."""
    stack.api("POST", "/api/v1/sessions", json={"app": "ssh-session", "config": {"project": project}})
    worker = stack.api("POST", "/api/v1/workers/register", token=stack.agent_token, json={
        "name": f"bench-{project}", "hostname": "bench", "queues": ["default"], "cpus": 2, "memory_bytes": 1, "run_as": "root",
        "is_root": True})
    claimed = stack.api("POST", f"/api/v1/workers/{worker['worker_id']}/claim", token=worker["token"])
    _heartbeat(stack.url, worker)
    return claimed["session_id"], claimed["session_token"]


def _heartbeat(url: str, worker: dict) -> None:
    import httpx

    def beat() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {worker['token']}"}) as http:
            while True:
                try:
                    http.post(f"/api/v1/workers/{worker['worker_id']}/heartbeat")
                except httpx.HTTPError:
                    pass
                time.sleep(2)

    threading.Thread(target=beat, daemon=True).start()


# --- one repetition ---------------------------------------------------------------------------------

def run_once(stack, ws: Path, work: Path, rep: int) -> dict:
    r: dict = {}
    session, token = session_token(stack, f"bench-{rep}-{time.time_ns()}")
    state = work / f"state-{rep}"
    repo = work / f"restic-{rep}"
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=str(repo))
    subprocess.run(["restic", "init", "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
    archive = work / "ws.tar.zst"

    settle(ws)
    b = berth_child("snapshot", stack, token, session, ws, state)
    r["berth_full"], r["berth_full_process"], r["rss_snapshot"] = b["seconds"], b["process_seconds"], b["rss_mb"]
    r["files"], r["bytes"] = b["files"], b["bytes_total"]
    settle(ws)
    r["tar_full"] = timed(f"tar -cf - -C {ws} . | zstd -1 -T0 -q -f -o {archive}")
    settle(ws)
    r["restic_full"] = timed(f"restic backup -q {ws}", env)

    r["changed"] = change_one_percent(ws, rep)
    settle(ws)
    b = berth_child("snapshot", stack, token, session, ws, state)
    r["berth_incr"], r["berth_incr_process"], r["rss_incr"] = b["seconds"], b["process_seconds"], b["rss_mb"]
    r["berth_incr_sent"] = b["bytes_sent"]
    settle(ws)
    r["restic_incr"] = timed(f"restic backup -q {ws}", env)

    for name in ("berth", "tar", "restic"):
        dest = work / f"restore-{name}"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        if name == "berth":
            b = berth_child("restore", stack, token, session, dest, state)
            r["berth_restore"], r["berth_restore_process"], r["rss_restore"] = b["seconds"], b["process_seconds"], b["rss_mb"]
        elif name == "tar":
            subprocess.run(f"tar -cf - -C {ws} . | zstd -1 -T0 -q -f -o {archive}", shell=True, check=True)
            r["tar_restore"] = timed(f"zstd -d -c -q {archive} | tar -xf - -C {dest}")
        else:
            r["restic_restore"] = timed(f"restic restore -q latest --target {dest}", env)
        shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    archive.unlink(missing_ok=True)
    return r


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="workspace size (1024: ~20,000 files, ~1 GiB)")
    parser.add_argument("--runs", type=int, default=2, help="repetitions (the median is printed)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/berth-bench-ws"), help="work directory (kept between runs)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import Stack  # the same real server the tests use

    ws = args.dir / "workspace"
    print(f"building a {args.size_mb} MB workspace in {ws} …", flush=True)
    build_workspace(ws, args.size_mb)
    work = args.dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stack = Stack(work, None)
    runs = []
    try:
        stack.start_server()
        stack.login()
        for rep in range(args.runs):
            runs.append(run_once(stack, ws, work, rep))
            print(f"run {rep + 1}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in runs[-1].items()),
                  flush=True)
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"\nworkspace: {med['files']:.0f} files, {med['bytes'] / 1e6:.0f} MB; incremental after changing {med['changed']:.0f} files "
          f"(berth sent {med['berth_incr_sent'] / 1e6:.1f} MB); median of {len(runs)} runs; {os.cpu_count()} CPUs")
    rows = [
        ("full snapshot", "berth_full", "tar|zstd -1 -T0", "tar_full", 1.0),
        ("incremental", "berth_incr", "restic incremental", "restic_incr", 0.25),
        ("restore", "berth_restore", "zstd -d|tar -x", "tar_restore", 1.0),
    ]
    # Ratios are taken within each run (the machine's speed drifts between runs), then their median.
    print(f"{'':16}{'berth':>9}  {'baseline':<20}{'time':>8}{'ratio':>8}{'target':>8}   per run")
    for name, ours, base_name, base, target in rows:
        ratios = [r[ours] / r[base] for r in runs]
        ratio = statistics.median(ratios)
        ok = "ok" if ratio <= target else "MISSED"
        print(f"{name:16}{med[ours]:8.2f}s  {base_name:<20}{med[base]:7.2f}s{ratio:7.2f}x{target:7.2f}x  {ok:6}  "
              + " ".join(f"{x:.2f}" for x in ratios))
    print(f"{'restic':16}full {med['restic_full']:.2f}s, restore {med['restic_restore']:.2f}s")
    print(f"berth child process wall (incl. ~Python start-up): full {med['berth_full_process']:.2f}s, "
          f"incremental {med['berth_incr_process']:.2f}s, restore {med['berth_restore_process']:.2f}s")
    peak = max(med["rss_snapshot"], med["rss_incr"])
    print(f"peak RSS: snapshot {peak:.0f} MB (target <= 200: {'ok' if peak <= 200 else 'MISSED'}), restore {med['rss_restore']:.0f} MB")


if __name__ == "__main__":
    main()

"""One pydantic-settings model per component; every field reads ``BERTH_<FIELD>`` from the environment."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from berth.apps.container_args import check_allowed_setting, check_image


def default_data_dir() -> Path:
    return Path(os.environ.get("BERTH_HOME", "~/.berth")).expanduser()


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BERTH_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="Directory for the embedded database and the snapshot store.")
    host: str = Field("127.0.0.1", description="Address the server listens on.")
    port: int = Field(8470, description="Port the server listens on.")
    public_url: str | None = Field(None, description="URL users and agents reach the server at; defaults to http://HOST:PORT.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; SQLite under data_dir when unset, e.g. postgresql+psycopg://user:pw@host/db.")
    secret_key: SecretStr | None = Field(None, description="Key that seals stored secrets (SSH passwords, launch credentials); "
                                         "when unset, data_dir/secret.key is created. Replicas must share it.")
    db_pool_size: int = Field(20, ge=1, description="PostgreSQL: connections kept open; more than the requests usually in flight, so none is opened per request.")
    db_max_overflow: int = Field(20, ge=0, description="PostgreSQL: extra connections opened under bursts and closed after use.")
    db_pool_pre_ping: bool = Field(False, description="PostgreSQL: test each connection before use (one more round trip per request). "
                                   "Off by default: a dropped connection fails one request and resets the pool.")
    admin_password: str | None = Field(None, description="Password for the bootstrap user 'admin' on first start; generated and printed once when unset.")
    agent_token: str | None = Field(None, description="Agent registration token accepted besides admin tokens (berth up sets one for its local agent).")
    heartbeat_timeout_s: float = Field(30.0, description="A worker with no heartbeat for this long is marked lost and its sessions failed.")
    reaper_interval_s: float = Field(5.0, description="How often the server looks for lost workers.")
    long_poll_s: float = Field(25.0, description="Longest time a long-poll request (claim, logs --follow, stop watch) is held open.")
    poll_interval_s: float = Field(0.25, description="How often a held long-poll re-reads the database (so replicas see each other's writes).")
    token_days: float = Field(30.0, description="Lifetime in days of API tokens created by login.")
    store_url: str | None = Field(None, description="Where workspace snapshots (packs, manifests) are kept: a directory or any fsspec URL (s3://bucket/prefix, gcs://…, memory://); <data_dir>/store when unset.")
    workspace_keep: int = Field(5, ge=1, description="Snapshots kept per session; older ones are deleted when a new one is committed.")
    workspace_gc_grace_s: float = Field(6 * 3600.0, ge=0, description="Unreferenced packs younger than this are kept (an upload in progress may still commit them); also how long a sync may take at most.")
    workspace_gc_interval_s: float = Field(3600.0, gt=0, description="Least time between two garbage collections of unreferenced packs (run after a snapshot commit).")
    metrics_retention_days: float = Field(7.0, gt=0, description="Resource metric samples (sessions and workers) older than this many days are deleted.")
    metrics_retention_interval_s: float = Field(3600.0, gt=0, description="How often the server deletes expired metric samples.")
    metrics_token: str | None = Field(None, description="Bearer token Prometheus sends to scrape GET /metrics; when unset, only admin API tokens may read /metrics.")
    max_body_bytes: int = Field(1 << 20, ge=4096, description="Largest request body accepted (413 above it), except workspace uploads and supervisor/agent batches.")
    max_batch_bytes: int = Field(16 << 20, ge=4096, description="Largest body of the batches supervisors and agents send: console lines, metric samples, missing-chunk queries, pack reads.")
    max_upload_bytes: int = Field(256 << 20, ge=1 << 20, description="Largest workspace upload (a pack or a snapshot manifest; the routes also apply the snapshot format's own limits), and largest request body to a session's web app through the gateway.")
    login_window_s: float = Field(900.0, gt=0, description="Failed logins are counted over this sliding window (seconds); "
                                  "a lockout ends at the latest this long after the failures that caused it.")
    login_max_failures_per_address: int = Field(10, ge=0, description="Failed logins from one client address within the window "
                                                "before its logins get 429 with Retry-After (0: no limit).")
    login_max_failures_per_user: int = Field(30, ge=0, description="Failed logins for one username (from any address) within the window before "
                                             "logins as that user get 429 (0: no limit). Higher than the per-address limit, so one "
                                             "address alone cannot lock a user out.")
    login_trusted_address_days: float = Field(30.0, ge=0, description="The per-username limit does not apply from an address where that user "
                                              "logged in within this many days, so failures elsewhere cannot lock the owner out (0: off).")
    password_hash_time_cost: int = Field(3, ge=1, le=100, description="argon2id passes per password hash (default 3, with 64 MiB: "
                                         "RFC 9106's low-memory profile). A hash keeps its own parameters, so a change applies "
                                         "to passwords set from then on. Lower only for tests: it is what a stolen hash costs to guess.")
    password_hash_memory_kib: int = Field(65536, ge=64, le=4 << 20, description="argon2id memory per password hash in KiB (default "
                                          "65536: 64 MiB). Lower only for tests, as password_hash_time_cost.")
    trusted_proxies: list[str] = Field(default_factory=list, description="Addresses of reverse proxies whose X-Forwarded-For names the client "
                                       "(JSON list); none by default: the client address is the connection's.")
    web_session_hours: float = Field(12.0, gt=0, le=24 * 365, description="A browser login lasts this long (hours); logging out ends it sooner.")
    web_cookie_secure: bool = Field(False, description="Mark the browser's session cookie Secure even when the request looks like plain "
                                    "http (a TLS proxy that is not in BERTH_TRUSTED_PROXIES); under https it is Secure anyway.")
    replica_name: str | None = Field(None, description="This server process's name among replicas, recorded with each agent tunnel it holds "
                                     "(so another replica can find which one serves a worker); hostname:pid when unset.")
    replica_url: str | None = Field(None, description="URL the other server replicas reach this one at (e.g. http://10.0.0.5:8470), so a "
                                    "gateway request that lands on another replica is forwarded to the one holding the worker's "
                                    "tunnel; unset: such a request is answered 503 naming the replica that holds it.")
    gateway_cookie_minutes: float = Field(60.0, gt=0, le=24 * 60, description="How long a session-scoped gateway cookie (set when a browser "
                                          "opens a session's shareable link) stays valid; a new one is set on the next visit of the link.")
    gateway_origins: list[str] = Field(default_factory=list, description="Origins besides the server's own (public_url, Host) allowed to open "
                                       "gateway WebSockets with a cookie (JSON list of scheme://host[:port]).")
    gateway_app_sandbox: bool = Field(True, description="Serve pages of sessions' own web apps (/s/<id>/app/) under a CSP sandbox (an opaque "
                                      "origin), so an app's scripts cannot act as the berth user viewing them. Apps that need "
                                      "same-origin cookies or storage in the browser break under it; turn it off only when every "
                                      "project member may be trusted with every other member's berth account.")
    gateway_grant_cache_s: float = Field(2.0, ge=0, description="How long the gateway remembers that a credential may reach a session "
                                         "(saves the database reads for a page's burst of requests); a revoked token or removed "
                                         "member is refused at the latest this much later. 0: ask the database every time.")
    tunnel_open_timeout_s: float = Field(15.0, gt=0, description="How long the gateway waits for an agent to open a stream to a session.")
    container_args_allowed: list[str] = Field(default_factory=list, description="Options of sessions' container_args that break "
                                              "a session's isolation and are refused at launch, allowed here anyway (JSON list, "
                                              "e.g. [\"--device\", \"--cap-add\", \"-v\"]): each lifts every refusal of that "
                                              "option (--volume: bind mounts of any host path), and an option berth does not "
                                              "know may be named (it then takes its value as --option=value). Options berth "
                                              "sets itself (--name, --rm, --entrypoint, ...) cannot be allowed.")
    web_assets_dir: Path | None = Field(None, description="The node_modules directory the web pages' scripts and styles (htmx, uPlot, "
                                        "xterm.js, noVNC) are served from; the checkout's node_modules when unset (scripts/setup.sh).")

    @field_validator("container_args_allowed")
    @classmethod
    def _container_args_allowed(cls, value: list[str]) -> list[str]:
        return check_allowed_setting(value)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'berth.db'}"


class AgentSettings(BaseSettings):
    # a bad value is named, never echoed: a mistyped token or an image URL with credentials stays out of logs
    model_config = SettingsConfigDict(env_prefix="BERTH_AGENT_", extra="ignore", hide_input_in_errors=True)

    server: str = Field("http://127.0.0.1:8470", description="URL of the berth server.")
    token: str | None = Field(None, description="Agent registration token (or an admin API token) used once to register.")
    queues: list[str] = Field(default_factory=lambda: ["default"], description="Queues this agent takes sessions from.")
    name: str | None = Field(None, description="Worker name; the hostname when unset.")
    data_dir: Path = Field(default_factory=lambda: default_data_dir() / "agent", description="Agent state: identity, per-session run directories.")
    homes_dir: Path = Field(Path("/var/lib/berth/homes"), description="Where per-session home directories live when the agent runs as root (must be traversable by session users).")
    runtime_dir: Path = Field(Path("/run/berth"), description="Root agents: per-session sockets the session user may use but not change (the berth-sync socket), "
                              "one root-owned directory per session; non-root agents use the session's own run directory.")
    backend: str = Field("process", description="Session backend: process or container.")
    advertise_host: str | None = Field(None, description="Host name users connect to for SSH; the address used to reach the server when unset.")
    bind_host: str = Field("0.0.0.0", description="Address per-session SSH servers listen on.")
    heartbeat_s: float = Field(5.0, description="Seconds between heartbeats.")
    tunnel: bool = Field(True, description="Keep an outbound tunnel to the server, so the gateway reaches this worker's sessions without any inbound route.")
    tunnel_backoff_max_s: float = Field(15.0, gt=0, description="Longest wait between two attempts to reconnect the tunnel (the wait doubles from 0.25 s).")
    python: str = Field("/usr/bin/python3", description="Python used for session virtual environments (must be readable by session users).")
    sync_minutes: float = Field(10.0, description="Minutes between periodic workspace syncs (a session's config may override).")
    metrics_sample_s: float = Field(2.0, gt=0, description="Seconds between samples of each session's CPU, memory, disk, network and GPU use.")
    metrics_post_s: float = Field(10.0, gt=0, description="Seconds between batches of samples posted to the server.")
    status_report_s: float = Field(30.0, gt=0, description="Seconds between a running session's reports of its idle time and of what "
                                   "keeps it alive (a change between active and idle is reported at once).")
    host_metrics_sample_s: float = Field(5.0, gt=0, description="Seconds between samples of the worker machine's own CPU, memory, disk, network and GPUs.")
    host_metrics_post_s: float = Field(30.0, gt=0, description="Seconds between batches of worker machine samples posted to the server.")
    idle_input_window_s: float = Field(60.0, description="User input this recent keeps a session alive (tty times move in ~8 s steps).")
    idle_warn_before_s: float = Field(600.0, description="Warn open terminals this long before an idle shutdown.")
    workspace_max_gb: float = Field(50.0, description="Largest workspace a session stores; over it the sync fails and the previous snapshot is kept.")
    setup_timeout_s: float = Field(3600.0, gt=0, description="Longest a session's setup (backend, workspace restore, the app's steps and servers) "
                                   "may take; past it the session fails and what was made is torn down.")
    container_cli: str | None = Field(None, description="Container backend: the engine's CLI, podman or docker; the first of them "
                                      "installed when unset.")
    container_docker_host: str | None = Field(None, description="Container backend with the Docker CLI: the daemon's address "
                                              "(docker --host, e.g. unix:///run/docker.sock, or a Podman service's "
                                              "Docker API socket); unset: the CLI's default.")
    container_runtime: str | None = Field("runc", description="Container backend: the OCI runtime (--runtime): runc, crun, sysbox-runc; "
                                          "unset: the engine's default.")
    container_image: str | None = Field(None, description="Container backend: the image of sessions that name none (Remote "
                                        "Desktop sessions always; SSH sessions launched without --image); it must hold "
                                        "the desktop's programs (Xvnc from tigervnc-standalone-server, openbox, xterm) "
                                        "for desktops. Unset: such sessions fail, saying so.")
    container_desktop_runtime: str | None = Field("auto", description="Container backend: the OCI runtime of Remote Desktop "
                                                  "sessions (VM-like machines); auto: sysbox-runc where the worker has it "
                                                  "(systemd and Docker can run inside), else container_runtime; any other "
                                                  "value names the runtime; unset: the engine's default.")
    container_run_args: list[str] = Field(default_factory=list, description="Container backend: extra flags for every session's "
                                          "`run` (JSON list), before the user's container_args; e.g. [\"--ulimit\", "
                                          "\"nofile=1024:1024\", \"--ulimit\", \"nproc=1024:1024\"] where the host's limits "
                                          "cannot be passed into containers.")
    container_subuid_start: int = Field(1_000_000_000, ge=65536, description="Container backend (Podman): first host id of the "
                                        "range sessions' user namespaces are cut from, 65536 ids per session, never reused; "
                                        "must not overlap /etc/subuid ranges or real users.")
    container_subuid_count: int = Field(1_000_000_000, ge=65536, description="Container backend (Podman): size of that range "
                                        "(it is used up after count / 65536 sessions).")
    container_cpus: float | None = Field(None, gt=0, description="Container backend: CPUs each session's container may use "
                                         "(--cpus); unlimited when unset.")
    container_memory: str | None = Field(None, pattern=r"^[0-9]+[bkmgBKMG]?$", description="Container backend: memory limit of "
                                         "each session's container (--memory, e.g. 8g); unlimited when unset.")
    container_network: str | None = Field(None, description="Container backend: the containers' network (--network); unset: "
                                          "slirp4netns with Podman (each session its own user-mode stack, no route to other "
                                          "sessions), bridge with Docker; none: no network at all.")

    @field_validator("container_image")
    @classmethod
    def _container_image(cls, value: str | None) -> str | None:
        return None if not value else check_image(value)


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BERTH_", extra="ignore")

    server: str | None = Field(None, description="Server URL; overrides the one saved by `berth login`.")
    token: str | None = Field(None, description="API token; overrides the one saved by `berth login`.")
    config_dir: Path = Field(default_factory=lambda: Path("~/.config/berth").expanduser(), description="Where `berth login` saves credentials.")
    timeout_s: float = Field(30.0, description="HTTP timeout for ordinary requests.")

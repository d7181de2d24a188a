"""Which OCI runtime a container session gets (container_runtime) and what Sysbox changes in the engine's argv
(container_cli); Sysbox is not installed here, so its argv is checked as built."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from berth.agent.backends.container_cli import ContainerCli, RunSpec, is_sysbox
from berth.agent.backends.container_runtime import choose_runtime, isolation_line, sysbox_from
from berth.agent.context import SupervisorContext
from berth.apps import RemoteDesktopConfig, SshSessionConfig
from berth.settings import AgentSettings

PODMAN = ContainerCli("podman", "/usr/bin/podman")
DOCKER = ContainerCli("docker", "/usr/bin/docker")


def spec(**kw) -> RunSpec:
    base = dict(name="berth-s1", session_id="s1", image="localhost/img:1", command=["/bin/sh"], uid_base=1_000_065_536,
                runtime="runc", gpus=True)
    base.update(kw)
    return RunSpec(**base)


def test_desktops_get_sysbox_where_the_worker_has_it():
    choice = choose_runtime(configured="runc", desktop="auto", vm_like=True, sysbox="/usr/bin/sysbox-runc")
    assert choice.runtime == "/usr/bin/sysbox-runc"
    assert choice.isolation == "isolation: sysbox-runc (VM-like: systemd and Docker can run inside)"


def test_desktops_without_sysbox_keep_the_runtime_and_say_what_they_miss():
    choice = choose_runtime(configured="runc", desktop="auto", vm_like=True, sysbox=None)
    assert choice.runtime == "runc"
    assert choice.isolation == ("isolation: runc container in its own user namespace; sysbox-runc is not installed on "
                                "this worker, so systemd and Docker cannot run inside")


def test_an_explicit_desktop_runtime_wins_and_ssh_sessions_keep_container_runtime():
    assert choose_runtime(configured="runc", desktop="crun", vm_like=True, sysbox="sysbox-runc").runtime == "crun"
    ssh = choose_runtime(configured="runc", desktop="auto", vm_like=False, sysbox="sysbox-runc")
    assert ssh.runtime == "runc" and ssh.isolation == "isolation: runc container in its own user namespace"
    default = choose_runtime(configured=None, desktop=None, vm_like=True, sysbox="sysbox-runc")
    assert default.runtime is None and "the engine's default runtime" in default.isolation
    everyone = choose_runtime(configured="sysbox-runc", desktop="auto", vm_like=True, sysbox=None)
    assert everyone.runtime == "sysbox-runc" and "VM-like" in everyone.isolation


def test_the_remote_desktop_is_the_vm_like_app():
    assert RemoteDesktopConfig.vm_like and not SshSessionConfig.vm_like


def test_sysbox_is_found_on_the_path_for_podman_and_in_the_daemons_runtimes_for_docker():
    assert sysbox_from("podman", "/usr/bin/sysbox-runc", "") == "/usr/bin/sysbox-runc"
    assert sysbox_from("podman", None, "") is None
    runtimes = json.dumps({"runc": {"path": "runc"}, "sysbox-runc": {"path": "/usr/bin/sysbox-runc"}})
    assert sysbox_from("docker", None, runtimes) == "sysbox-runc"  # the daemon's name, wherever the binary is
    assert sysbox_from("docker", "/usr/bin/sysbox-runc", json.dumps({"runc": {}})) is None  # not registered
    assert sysbox_from("docker", None, "not json") is None
    assert DOCKER.runtimes_argv() == ["/usr/bin/docker", "info", "--format", "{{json .Runtimes}}"]


def test_sysbox_under_podman_keeps_the_directed_slice_and_takes_no_devices():
    argv = PODMAN.run_argv(spec(runtime="/usr/bin/sysbox-runc"))
    assert argv[argv.index("--runtime") + 1] == "/usr/bin/sysbox-runc"
    # Sysbox honours the engine's mapping: 65536 ids, root -> the session's slice, so identity() stays known
    assert argv[argv.index("--uidmap") + 1] == "0:1000065536:65536"
    assert argv[argv.index("--gidmap") + 1] == "0:1000065536:65536"
    assert "--userns" not in argv and "--device" not in argv
    assert "--device" in PODMAN.run_argv(spec())  # runc: the GPUs' CDI devices
    docker = DOCKER.run_argv(spec(runtime="sysbox-runc"))
    assert docker[docker.index("--runtime") + 1] == "sysbox-runc" and "--gpus" not in docker
    assert is_sysbox("sysbox-runc") and is_sysbox("/opt/bin/sysbox-runc") and not is_sysbox("runc")
    assert not is_sysbox(None)


def test_the_image_and_desktop_runtime_settings(monkeypatch):
    monkeypatch.setenv("BERTH_AGENT_CONTAINER_IMAGE", "localhost/desk:1")
    monkeypatch.setenv("BERTH_AGENT_CONTAINER_DESKTOP_RUNTIME", "sysbox-runc")
    settings = AgentSettings()
    assert settings.container_image == "localhost/desk:1" and settings.container_desktop_runtime == "sysbox-runc"
    ctx = SupervisorContext.of(settings.model_copy(update={"server": "http://x"}))
    assert ctx.container_image == "localhost/desk:1" and ctx.container_desktop_runtime == "sysbox-runc"
    monkeypatch.delenv("BERTH_AGENT_CONTAINER_DESKTOP_RUNTIME")
    assert AgentSettings().container_desktop_runtime == "auto"
    monkeypatch.setenv("BERTH_AGENT_CONTAINER_IMAGE", "https://user:hunter2@x/y")
    with pytest.raises(ValidationError) as err:
        AgentSettings()
    assert "container_image" in str(err.value) and "hunter2" not in str(err.value)


def test_isolation_line_names_the_runtime_by_its_name():
    assert isolation_line("/usr/local/bin/crun") == "isolation: crun container in its own user namespace"

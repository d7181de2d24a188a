"""The container engines' argv (container_cli): what the backend runs, for Podman and for Docker."""

from __future__ import annotations

import pytest

from berth.agent.backends.container_cli import ContainerCli, RunSpec, userns_base
from berth.errors import SetupFailed

PODMAN = ContainerCli("podman", "/usr/bin/podman")
DOCKER = ContainerCli("docker", "/usr/bin/docker")


def spec(**kw) -> RunSpec:
    base = dict(name="berth-s1", session_id="s1", image="localhost/img:1", command=["/bin/sh", "-c", "loop"],
                uid_base=1_000_065_536, mounts=[("/h/s1", "/h/s1", "")], runtime="runc", cpus=2.0, memory="8g",
                engine_args=["--ulimit", "nofile=1024:1024"], user_args=["-e", "A=1", "--shm-size", "1g"])
    base.update(kw)
    return RunSpec(**base)


def test_podman_run_maps_root_to_the_session_slice_and_ends_with_our_main_process():
    argv = PODMAN.run_argv(spec())
    assert argv[:2] == ["/usr/bin/podman", "run"]
    assert "--detach" in argv and "--interactive" in argv
    assert argv[argv.index("--uidmap") + 1] == "0:1000065536:65536"
    assert argv[argv.index("--gidmap") + 1] == "0:1000065536:65536"
    assert argv[argv.index("--label") + 1] == "berth.session=s1"
    assert argv[argv.index("--name") + 1] == "berth-s1"
    assert argv[argv.index("--runtime") + 1] == "runc"
    assert argv[argv.index("--network") + 1] == "slirp4netns"
    assert argv[argv.index("--cpus") + 1] == "2" and argv[argv.index("--memory") + 1] == "8g"
    assert argv[argv.index("--volume") + 1] == "/h/s1:/h/s1"
    # the operator's flags, then the user's, then our main process whatever the image's entrypoint
    assert argv.index("nofile=1024:1024") < argv.index("A=1")
    assert argv[-5:] == ["--entrypoint", "/bin/sh", "localhost/img:1", "-c", "loop"]


def test_docker_run_relies_on_the_daemons_remap_and_uses_the_bridge():
    argv = DOCKER.run_argv(spec(runtime=None, cpus=None, memory=None))
    assert "--uidmap" not in argv and "--gidmap" not in argv
    assert argv[argv.index("--network") + 1] == "bridge"
    assert "--runtime" not in argv and "--cpus" not in argv and "--memory" not in argv


def test_gpu_flags():
    assert PODMAN.run_argv(spec(gpus=True))[PODMAN.run_argv(spec(gpus=True)).index("--device") + 1] == "nvidia.com/gpu=all"
    argv = DOCKER.run_argv(spec(gpus=True))
    assert argv[argv.index("--gpus") + 1] == "all"
    assert "--gpus" not in PODMAN.run_argv(spec(gpus=True)) and "--device" not in DOCKER.run_argv(spec(gpus=False))


def test_configured_network_wins():
    argv = PODMAN.run_argv(spec(network="none"))
    assert argv[argv.index("--network") + 1] == "none"


def test_exec_passes_env_by_file_or_name_never_values():
    argv = PODMAN.exec_argv("berth-s1", ["python3", "-V"], user="1000:1000", cwd="/h/s1", env_file="/d/env",
                            env_names=["MULTI"], interactive=True, preserve_fds=1)
    assert argv == ["/usr/bin/podman", "exec", "--interactive", "--user", "1000:1000", "--workdir", "/h/s1",
                    "--env-file", "/d/env", "--env", "MULTI", "--preserve-fds", "1", "berth-s1", "python3", "-V"]
    with pytest.raises(SetupFailed, match="file descriptors"):
        DOCKER.exec_argv("berth-s1", ["x"], preserve_fds=1)


def test_other_commands():
    assert PODMAN.remove_argv("berth-s1") == ["/usr/bin/podman", "rm", "--force", "--time", "2", "berth-s1"]
    assert DOCKER.remove_argv("berth-s1") == ["/usr/bin/docker", "rm", "--force", "berth-s1"]
    assert DOCKER.list_by_label_argv("s1")[-4:] == ["--filter", "label=berth.session=s1", "--format", "{{.Names}}"]
    assert PODMAN.image_exists_argv("img")[1:3] == ["image", "inspect"]
    assert PODMAN.logs_argv("berth-s1", 10) == ["/usr/bin/podman", "logs", "--tail", "10", "berth-s1"]


def test_choose_refuses_unknown_cli():
    with pytest.raises(SetupFailed, match="not supported"):
        ContainerCli.choose("lxc")


def test_docker_host_goes_first_on_every_command_line():
    remote = ContainerCli("docker", "/usr/bin/docker", "unix:///run/api/docker.sock")
    head = ["/usr/bin/docker", "--host", "unix:///run/api/docker.sock"]
    assert remote.run_argv(spec(uid_base=None))[:4] == [*head, "run"]
    assert remote.exec_argv("berth-s1", ["sh"], user="0:0", interactive=True) == [
        *head, "exec", "--interactive", "--user", "0:0", "berth-s1", "sh"]
    for argv in (remote.inspect_argv("c", "{{.Id}}"), remote.remove_argv("c"), remote.logs_argv("c", 1),
                 remote.list_by_label_argv("s1"), remote.image_exists_argv("img")):
        assert argv[:3] == head
    assert DOCKER.cmd == ["/usr/bin/docker"] and PODMAN.cmd == ["/usr/bin/podman"]


def test_choose_gives_the_docker_host_to_docker_only(monkeypatch, tmp_path):
    for name in ("docker", "podman"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ContainerCli.choose("docker", docker_host="unix:///x.sock").host == "unix:///x.sock"
    assert ContainerCli.choose("podman", docker_host="unix:///x.sock").host is None


def test_userns_base_reads_the_real_mapping():
    assert userns_base("         0  400000000      65536\n", "0 400000000 65536\n", need=1000) == (400_000_000, 65536)
    # Docker's userns-remap: one extent from the remap user's subordinate range
    assert userns_base("0 231072 65536\n", "0 231072 65536\n", need=1000) == (231072, 65536)


@pytest.mark.parametrize("uid_map, gid_map, message", [
    ("0 0 4294967295\n", "0 0 4294967295\n", "root is the host's root"),   # no user namespace
    ("1 100000 65536\n", "1 100000 65536\n", "root is the host's root"),   # root not mapped at all
    ("0 231072 65536\n", "0 300000 65536\n", "maps differ"),
    ("0 1000 1\n1 100000 65536\n", "0 1000 1\n1 100000 65536\n", "rootless"),  # a rootless daemon
    ("0 231072 65536\nnonsense\n", "0 231072 65536\n", "unreadable"),
])
def test_userns_base_refuses(uid_map, gid_map, message):
    with pytest.raises(SetupFailed, match=message):
        userns_base(uid_map, gid_map, need=1000)


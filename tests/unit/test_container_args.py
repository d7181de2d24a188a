"""Container arguments and image references at launch: parsing as Podman/Docker read them, the isolation rules,
the admin's allow-list, and messages that name the flag but never a value."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from berth.apps import validate_config
from berth.apps.container_args import POLICY_CONTEXT, ContainerArgsError, check, check_image, split
from berth.errors import InvalidInput
from berth.settings import ServerSettings

SERVER = {POLICY_CONTEXT: frozenset()}

# (written flag, its long name, a value that is refused; None for a boolean)
REFUSED = [
    ("--privileged", None, None),
    ("--pid", None, "host"), ("--pid", None, "container:abc"),
    ("--network", None, "host"), ("--network", None, "container:db"), ("--net", None, "host"), ("--network", None, "ns:/proc/1/ns/net"),
    ("--ipc", None, "host"), ("--uts", None, "host"), ("--cgroupns", None, "host"),
    ("--userns", None, "host"), ("--userns", None, "keep-id"),
    ("--cap-add", None, "SYS_ADMIN"), ("--device", None, "/dev/kvm"), ("--device-cgroup-rule", None, "c 1:3 mr"),
    ("--gpus", None, "all"),
    ("--security-opt", None, "seccomp=unconfined"), ("--security-opt", None, "apparmor=unconfined"),
    ("--security-opt", None, "label=disable"), ("--security-opt", None, "label:disable"),
    ("-v", "--volume", "/:/host"), ("--volume", None, "/etc:/etc:ro"), ("-v", "--volume", "./x:/x"), ("-v", "--volume", "data:/data"),
    ("-v", "--volume", "/anonymous"), ("--mount", None, "type=bind,src=/,dst=/host"), ("--mount", None, "type=volume,src=v,dst=/v"),
    ("--mount", None, "src=v,dst=/v"), ("--mount", None, "type=devpts,dst=/dev/pts"), ("--volumes-from", None, "other"),
    ("-u", "--user", "0"), ("--user", None, "root"), ("--uidmap", None, "0:0:65536"), ("--gidmap", None, "0:0:65536"),
    ("--subuidname", None, "root"), ("--subgidname", None, "root"), ("--runtime", None, "runc"),
    ("--init-path", None, "/bin/sh"), ("--oom-score-adj", None, "-1000"), ("--cgroup-parent", None, "/"),
    ("-p", "--publish", "22:22"), ("-P", "--publish-all", None), ("--pod", None, "other"), ("--env-file", None, "/etc/shadow"),
    ("--group-add", None, "keep-groups"), ("--oom-kill-disable", None, None),
]
NEVER = [("--name", "x"), ("--rm", None), ("--entrypoint", "sh"), ("--restart", "always"), ("-d", None), ("-i", None),
         ("-t", None), ("-a", "stdout"), ("--replace", None), ("--label", "berth.session=other"), ("-l", "berth.x=1"),
         ("-e", "HOME"), ("--env", "PATH*"), ("--env-host", None)]


def forms(flag: str, value: str | None) -> list[str]:
    """Every way of writing it: --flag=value, --flag value, -fvalue, -f=value, -f value, inside a cluster."""
    if value is None:
        out = [flag]
        if len(flag) == 2:
            out.append(f"-q{flag[1]}")
        return out
    quoted = f"'{value}'"
    out = [f"{flag} {quoted}"]
    if flag.startswith("--"):
        out.append(f"{flag}={quoted}")
    else:
        out += [f"{flag}{quoted}", f"{flag}={quoted}", f"-q{flag[1]} {quoted}"]
    return out


@pytest.mark.parametrize("flag,long,value", REFUSED)
def test_each_flag_that_breaks_isolation_is_refused_in_each_form(flag, long, value):
    for text in forms(flag, value):
        with pytest.raises(ContainerArgsError) as exc:
            check(f"--cpus 2 {text} --shm-size 1g")
        assert str(exc.value).startswith(f"{flag} is not allowed ("), (text, str(exc.value))
        if value and value not in ("all", "host", "0", "root", "other", "runc"):
            assert value not in str(exc.value)  # named, not echoed
    long = long or flag
    if len(flag) == 2:  # the long spelling too
        for text in forms(long, value):
            with pytest.raises(ContainerArgsError, match=f"^{long} is not allowed"):
                check(text)


@pytest.mark.parametrize("flag,long,value", REFUSED)
def test_the_admin_setting_allows_a_refused_flag(flag, long, value):
    allowed = frozenset(ServerSettings(container_args_allowed=[flag]).container_args_allowed)
    assert allowed == {long or flag}
    for text in forms(flag, value):
        assert check(text, allowed)[-1].name == (long or flag)
    other = "--privileged" if flag != "--privileged" else "--cap-add"
    with pytest.raises(ContainerArgsError, match=f"^{other} is not allowed"):  # only that one
        check(f"{other} ALL" if other == "--cap-add" else other, allowed)


@pytest.mark.parametrize("flag,value", NEVER)
def test_options_berth_sets_itself_are_never_allowed(flag, value):
    text = flag if value is None else f"{flag} {value}"
    with pytest.raises(ContainerArgsError, match=f"^{flag} is not allowed"):
        check(text, frozenset({"--name", "--rm", "--label", "--env"}))
    if flag not in ("--label", "-l", "-e", "--env"):
        with pytest.raises(ValidationError, match="cannot be allowed"):
            ServerSettings(container_args_allowed=[flag])


def test_harmless_options_pass_as_written():
    text = ("--cpus 2 --memory=4g -m 4g --shm-size 1g --pids-limit 500 --ulimit nofile=4096:4096 -e A=1 -eB=2 --env 'C=with space' "
            "-w /tmp -h box --hostname=box --tmpfs /scratch --mount type=tmpfs,dst=/x --read-only --init --cap-drop ALL "
            "--security-opt no-new-privileges --oom-score-adj=100 --network none --net=slirp4netns:allow_host_loopback=false "
            "--ipc private --pid=private --add-host db:10.0.0.2 --dns 1.1.1.1 --label team=ml -l x=y --tz UTC "
            "--privileged=false --group-add video --sysctl net.ipv4.ip_forward=1 --expose 8080 --systemd=false -q")
    args = check(text)
    assert [a.name for a in args][:4] == ["--cpus", "--memory", "--memory", "--shm-size"]
    assert ("-e", "--env", "B=2") in [(a.written, a.name, a.value) for a in args]
    assert ("--env", "--env", "C=with space") in [(a.written, a.name, a.value) for a in args]
    assert split(text)[:4] == ["--cpus", "2", "--memory=4g", "-m"]
    assert check("") == []


def test_garbage_is_refused_naming_it_without_echoing_values():
    cases = {
        "--cpus 2 'unbalanced": "cannot be split like a shell command line (no closing quotation)",
        "-e TOKEN=s3cret\\": "cannot be split like a shell command line",
        "--env TOKEN s3cret": "argument 3 is not an option",
        "ubuntu": "argument 1 is not an option",
        "--cpus 2 -- sh": "argument 3 is not an option",
        "--cpus": "--cpus needs a value",
        "-e": "-e needs a value",
        "--frobnicate=s3cret": "--frobnicate is not an option berth knows",
        "-x": "-x is not an option berth knows",
        "--privileged=maybe": "--privileged takes no value",
        "--oom-score-adj lots": "--oom-score-adj is not allowed (it needs a whole number)",
        "-e 'TO KEN=s3cret'": "-e is not allowed (it needs KEY=VALUE",
        "--Caps%=1": "argument 1 is not an option name",
    }
    for text, message in cases.items():
        with pytest.raises(ContainerArgsError) as exc:
            check(text)
        assert message in str(exc.value), (text, str(exc.value))
        assert "s3cret" not in str(exc.value)


def test_an_unknown_flag_the_admin_names_passes_with_its_value_attached():
    allowed = frozenset(ServerSettings(container_args_allowed=["--hooks-dir"]).container_args_allowed)
    assert [(a.name, a.value) for a in check("--hooks-dir=/x --cpus 1", allowed)] == [("--hooks-dir", "/x"), ("--cpus", "1")]
    with pytest.raises(ValidationError, match="is not an option name"):
        ServerSettings(container_args_allowed=["privileged"])


@pytest.mark.parametrize("image", ["ubuntu", "ubuntu:24.04", "localhost/berth-test:bookworm", "ghcr.io/org/team/img:v1.2-rc_3",
                                   "nvcr.io/nvidia/pytorch:24.01-py3", "registry.example.com:5000/a/b", "[::1]:5000/a:b",
                                   "python@sha256:" + "a" * 64, "my_org/my__img", "a-b--c"])
def test_image_references(image):
    assert check_image(f" {image} ") == image


@pytest.mark.parametrize("image", ["Ubuntu", "Org/img", "ghcr.io/Org/img", "docker://ubuntu", "oci-archive:/tmp/x.tar", "-v",
                                   "--privileged", "ubuntu:", "ubuntu:tag with space", "a//b", "/abs", "img@sha256:short",
                                   "https://user:s3cret@registry/x", "a" * 256, "img:" + "t" * 129])
def test_bad_image_references_are_refused_without_echo(image):
    with pytest.raises(ValueError) as exc:
        check_image(image)
    assert "not an image reference" in str(exc.value) and "s3cret" not in str(exc.value)


def test_a_launch_is_validated_with_the_servers_policy():
    config = {"image": "ubuntu:24.04", "container_args": "--cpus 2 --privileged"}
    with pytest.raises(InvalidInput) as exc:
        validate_config("ssh-session", config, context=SERVER)
    assert exc.value.field == "config.container_args"
    assert exc.value.message == "config.container_args: --privileged is not allowed (it breaks the session's isolation)"
    allowed = {POLICY_CONTEXT: frozenset({"--privileged"})}
    assert validate_config("ssh-session", config, context=allowed).container_args == "--cpus 2 --privileged"
    # The agent (and the CLI reading a file) check the syntax only: the server applied its own admin's rules.
    assert validate_config("ssh-session", config).container_args == "--cpus 2 --privileged"
    with pytest.raises(InvalidInput, match="config.container_args: cannot be split"):
        validate_config("ssh-session", {**config, "container_args": "'"})
    with pytest.raises(InvalidInput, match="config.container_args: needs an image"):
        validate_config("ssh-session", {"container_args": "--cpus 2"}, context=SERVER)
    with pytest.raises(InvalidInput) as exc:
        validate_config("ssh-session", {"image": "Not An Image", "container_args": "--privileged"}, context=SERVER)
    assert exc.value.field == "config.image"
    assert validate_config("ssh-session", {"image": "  ", "container_args": ""}, context=SERVER).image is None

"""Configuration models: one field per seed option, strict validation, exact export/import round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.apps import SshSessionConfig, export_document, parse_document, validate_config
from berth.errors import InvalidInput

SEED_FIELDS = {
    # seed option -> config field
    "Repository": "git_repo", "Branch": "git_branch", "Commit": "git_commit", "Image": "image",
    "Docker Arguments": "container_args", "Init Script": "init_script", "Extra Packages": "packages",
    "Persistent Workspace Path": "workspace", "Queue": "queue", "Maximum idle time": "max_idle_hours",
    "Interactive Session Name": "name", "Interactive Session Project": "project", "Interactive Session Tags": "tags",
    "Restore Interactive Workspace ID": "restore_session", "Use DropBear": "dropbear",
    "Idle Network Threshold": "idle_network_mb", "Idle CPU Threshold": "idle_cpu", "Idle GPU Threshold": "idle_gpu",
}


def test_every_seed_option_is_a_field():
    assert set(SEED_FIELDS.values()) <= set(SshSessionConfig.model_fields)


def test_defaults():
    cfg = validate_config("ssh-session", {})
    assert cfg.project == "Interactive Session" and cfg.queue == "default" and cfg.workspace == "~/workspace"
    assert cfg.dropbear is False and cfg.tags == [] and cfg.packages == []


def test_tags_and_packages_accept_strings():
    cfg = validate_config("ssh-session", {"tags": " a, b ,,a", "packages": "numpy 'pandas>=2'\n# comment\ntorch==2.1"})
    assert cfg.tags == ["a", "b"]
    assert cfg.packages == ["numpy", "pandas>=2", "torch==2.1"]


@pytest.mark.parametrize(("config", "field"), [
    ({"unknown": 1}, "config.unknown"),
    ({"max_idle_hours": 0}, "config.max_idle_hours"),
    ({"idle_gpu": -1}, "config.idle_gpu"),
    ({"git_branch": "--upload-pack=evil"}, "config.git_branch"),
    ({"git_repo": "-oProxyCommand=x"}, "config.git_repo"),
    ({"packages": ["--index-url=http://evil"]}, "config.packages"),
    ({"workspace": "~other/ws"}, "config.workspace"),
    ({"workspace": "~/a/../../etc"}, "config.workspace"),
    ({"workspace": "/"}, "config.workspace"),
    ({"workspace": "/etc"}, "config.workspace"),
    ({"workspace": "/root/.ssh"}, "config.workspace"),
    ({"workspace": "~/../x"}, "config.workspace"),
    ({"workspace": "a/../../b"}, "config.workspace"),
    ({"workspace": "ws\x00"}, "config.workspace"),
    ({"workspace": "ws\x1b[0m"}, "config.workspace"),
    ({"workspace": "  "}, "config.workspace"),
    ({"idle_network_mb": float("inf")}, "config.idle_network_mb"),
    ({"idle_network_mb": float("nan")}, "config.idle_network_mb"),
    ({"max_idle_hours": float("nan")}, "config.max_idle_hours"),
    ({"workspace_max_gb": 1e308}, "config.workspace_max_gb"),
    ({"name": "a\x00b"}, "config.name"),
    ({"tags": ["ok", "bad\nline"]}, "config.tags.1"),
    ({"project": "a/b"}, "config.project"),
    ({"project": ".."}, "config.project"),
    ({"queue": "q?x"}, "config.queue"),
    ({"git_repo": "https://TOKEN123@github.com/o/r.git"}, "config.git_repo"),
    ({"git_repo": "https://u:TOKEN123@github.com/o/r.git"}, "config.git_repo"),
    ({"git_repo": "ssh://git:TOKEN123@host/o/r.git"}, "config.git_repo"),
    ({"init_script": "echo \x00"}, "config.init_script"),
    ({"tags": 5}, "config.tags"),
])
def test_invalid_values_name_the_field(config, field):
    with pytest.raises(InvalidInput) as info:
        validate_config("ssh-session", config)
    assert info.value.field == field
    assert info.value.message.startswith(field)


@pytest.mark.parametrize(("workspace", "stored"), [("work", "~/work"), ("a/b", "~/a/b"), ("~", "~"), ("~/", "~"),
                                                  ("~/x/./y/", "~/x/y"), ("./w", "~/w"), ("~/workspace", "~/workspace")])
def test_workspace_is_kept_inside_the_home(workspace, stored):
    assert validate_config("ssh-session", {"workspace": workspace}).workspace == stored


@pytest.mark.parametrize("url", ["git@github.com:org/repo.git", "ssh://git@github.com/org/repo.git", "https://github.com/o/r.git",
                                 "git+ssh://git@host/o/r.git", "/srv/git/repo.git"])
def test_git_urls_without_credentials_are_accepted(url):
    assert validate_config("ssh-session", {"git_repo": url}).git_repo == url


def test_credential_error_does_not_echo_the_url():
    with pytest.raises(InvalidInput) as info:
        validate_config("ssh-session", {"git_repo": "https://TOKEN123@github.com/o/r.git"})
    assert "TOKEN123" not in info.value.message and "--git-token-file" in info.value.message


def test_document_checks():
    with pytest.raises(InvalidInput, match="berth_config"):
        parse_document({"app": "ssh-session", "config": {}})
    with pytest.raises(InvalidInput, match="app: required"):
        parse_document({"berth_config": 1, "config": {}})
    with pytest.raises(InvalidInput, match="must be a JSON object"):
        parse_document([1, 2])


names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(lambda s: s.strip() == s and s)


@given(name=names, tags=st.lists(names.filter(lambda t: "," not in t), max_size=4, unique=True),
       hours=st.floats(min_value=0.001, max_value=1000), cpu=st.floats(min_value=0, max_value=100), dropbear=st.booleans())
def test_export_import_round_trip(name, tags, hours, cpu, dropbear):
    cfg = validate_config("ssh-session", {"name": name, "tags": tags, "max_idle_hours": hours, "idle_cpu": cpu, "dropbear": dropbear})
    dumped = cfg.model_dump(mode="json")
    app, again = parse_document(export_document("ssh-session", dumped))
    assert app.value == "ssh-session"
    assert again.model_dump(mode="json") == dumped


def test_a_bare_configuration_object_is_a_configuration_of_the_app_named():
    app, config = parse_document({"queue": "gpu", "tags": "a, b"}, "ssh-session")
    assert app.value == "ssh-session" and config.queue == "gpu" and config.tags == ["a", "b"]
    with pytest.raises(InvalidInput, match=r"^queu: unknown field") as info:  # named as written, not config.queu
        parse_document({"queu": "gpu"}, "ssh-session")
    assert info.value.field == "queu"
    with pytest.raises(InvalidInput, match="expected an exported configuration"):
        parse_document({"queue": "gpu"})  # no app known: which shapes are expected
    with pytest.raises(InvalidInput, match="expected an exported configuration"):
        parse_document("queue", "ssh-session")
    with pytest.raises(InvalidInput, match="^queue: unknown field"):  # a document with a stray key stays a mistake
        parse_document({"berth_config": 1, "app": "ssh-session", "queue": "gpu"}, "ssh-session")
    with pytest.raises(InvalidInput, match="berth_config: unsupported"):
        parse_document({"berth_config": 2, "app": "ssh-session", "config": {}}, "ssh-session")


# --- Remote Desktop (issue #9 point 1): its seed options, env in the forms people write, the shared workspace rule.

RD_SEED_FIELDS = {
    "Application Session Name": "name", "Type": "type", "Application instance project": "project", "Queue": "queue",
    "Idle Time Limit": "max_idle_hours", "Environment Variables": "env", "Application Session Tags": "tags",
    "Restore application state from a previous session ID": "restore_session", "Idle Network Threshold": "idle_network_mb",
    "Idle CPU Threshold": "idle_cpu", "Idle GPU Threshold": "idle_gpu",
}


def test_every_remote_desktop_seed_option_is_a_field_on_its_form():
    from berth.apps import RemoteDesktopConfig
    from berth.apps.remote_desktop import DASHBOARD_FIELDS, LAUNCH_FORM

    assert set(RD_SEED_FIELDS.values()) | {"workspace"} == set(RemoteDesktopConfig.model_fields)
    placed = [name for _title, _collapsed, members in LAUNCH_FORM for name, _label in members]
    assert sorted(placed) == sorted(RemoteDesktopConfig.model_fields)  # every field placed once
    assert [t for t, *_ in LAUNCH_FORM] == ["Application Session Name", "Type", "Application instance project", "Queue",
                                             "Idle Time Limit", "Environment Variables", "Advanced Options"]
    assert "links.browser" in DASHBOARD_FIELDS and "links.direct" in DASHBOARD_FIELDS and DASHBOARD_FIELDS[-1] == "console"
    cfg = validate_config("remote-desktop", {})
    assert cfg.type == "desktop" and cfg.env == {} and cfg.workspace == "~/workspace" and cfg.project == "Interactive Session"


@pytest.mark.parametrize("written", [{"A": "1", "B_2": "x=y"}, ["A=1", "B_2=x=y"], "A=1\nB_2=x=y\n", "A=1\r\n\r\n  B_2=x=y"])
def test_env_accepts_a_dict_a_list_and_lines(written):
    assert validate_config("remote-desktop", {"env": written}).env == {"A": "1", "B_2": "x=y"}


def test_env_keeps_values_as_written_and_type_takes_desktop_or_ssh():
    cfg = validate_config("remote-desktop", {"env": ["EMPTY=", "SPACED= a b", "TAB=a\tb"], "type": "ssh"})
    assert cfg.env == {"EMPTY": "", "SPACED": " a b", "TAB": "a\tb"} and cfg.type == "ssh"


@pytest.mark.parametrize(("config", "words"), [
    ({"env": {"1A": "x"}}, "'1A' is not a variable name"),
    ({"env": {"A-B": "x"}}, "'A-B' is not a variable name"),
    ({"env": {"": "x"}}, "'' is not a variable name"),
    ({"env": {"A" * 129: "x"}}, "is not a variable name"),
    ({"env": {"PATH": "/x"}}, "'PATH' is reserved"),
    ({"env": {"HOME": "/x"}}, "'HOME' is reserved"),
    ({"env": {"USER": "x"}}, "'USER' is reserved"),
    ({"env": {"BERTH_TOKEN": "x"}}, "'BERTH_TOKEN' is reserved"),
    ({"env": {"berth_x": "x"}}, "'berth_x' is reserved"),
    ({"env": ["A=1", "A=2"]}, "'A' is set twice"),
    ({"env": "A=1\nnot-a-pair"}, "entry 2 is not KEY=VALUE"),
    ({"env": [5]}, "KEY=VALUE string"),
    ({"env": {f"V{i}": "x" for i in range(101)}}, "at most 100 variables"),
    ({"env": {"A": "x" * 4097}}, "longer than 4096"),
    ({"env": {"A": "a\nb"}}, "must be one line"),
    ({"env": {"A": "a\x00b"}}, "must be one line"),
    ({"env": 5}, "valid dictionary"),
    ({"type": "vnc"}, "'desktop' or 'ssh'"),
    ({"git_repo": "https://x/y.git"}, "unknown field"),  # the SSH app's options are not the desktop's
])
def test_remote_desktop_invalid_values_name_the_field(config, words):
    field = "config." + next(iter(config))
    with pytest.raises(InvalidInput) as info:
        validate_config("remote-desktop", config)
    assert info.value.field.startswith(field) and info.value.message.startswith(field), info.value.message
    assert words in info.value.message


def test_env_errors_never_echo_values():
    for config in ({"env": {"A": "SECRET-1\n"}}, {"env": "A=1\nSECRET-2"}, {"env": {"A": "SECRET-3" * 1000}}):
        with pytest.raises(InvalidInput) as info:
            validate_config("remote-desktop", config)
        assert "SECRET" not in info.value.message


@pytest.mark.parametrize("bad", ["~other/ws", "~/a/../../etc", "/", "/etc", "~/../x", "a/../../b", "ws\x00", "ws\x1b[0m", "  "])
@pytest.mark.parametrize("app", ["ssh-session", "remote-desktop"])
def test_both_apps_share_the_workspace_rule(app, bad):
    with pytest.raises(InvalidInput) as info:
        validate_config(app, {"workspace": bad})
    assert info.value.field == "config.workspace"
    assert validate_config(app, {"workspace": "./x/./y/"}).workspace == "~/x/y"


@given(name=names, kind=st.sampled_from(["desktop", "ssh"]),
       env=st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True).filter(
           lambda k: not k.upper().startswith("BERTH_") and k not in ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD",
                                                                      "DISPLAY", "XAUTHORITY", "LD_PRELOAD", "LD_LIBRARY_PATH")),
           st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30), max_size=5),
       hours=st.floats(min_value=0.001, max_value=1000))
def test_remote_desktop_export_import_round_trip(name, kind, env, hours):
    cfg = validate_config("remote-desktop", {"name": name, "type": kind, "env": env, "max_idle_hours": hours})
    dumped = cfg.model_dump(mode="json")
    app, again = parse_document(export_document("remote-desktop", dumped))
    assert app.value == "remote-desktop" and again.model_dump(mode="json") == dumped == {**dumped, "env": env}
    with pytest.raises(InvalidInput, match="configures 'remote-desktop', not 'ssh-session'"):
        parse_document(export_document("remote-desktop", dumped), "ssh-session")

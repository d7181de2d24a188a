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

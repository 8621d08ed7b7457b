"""Where the broker URL comes from: the file wins over the env var; a bad file is one
clear error."""

from __future__ import annotations

import os

import pytest
from ebbtide import cli
from ebbtide.broker_url import read_url_file, url_from_environment
from ebbtide.errors import BrokerUrlFileError


def test_the_file_wins_over_the_env_var(tmp_path):
    path = tmp_path / "url"
    path.write_text("redis://from-file:6379/0\n")  # a Secret's trailing newline is fine
    env = {"EBBTIDE_BROKER_URL_FILE": str(path), "EBBTIDE_BROKER_URL": "redis://from-env/0"}
    assert url_from_environment(env) == "redis://from-file:6379/0"
    assert url_from_environment({"EBBTIDE_BROKER_URL": "redis://from-env/0"}) == (
        "redis://from-env/0"
    )
    assert url_from_environment({}) is None
    assert url_from_environment({"EBBTIDE_BROKER_URL_FILE": ""}) is None


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "cannot read the broker URL: No such file or directory"),
        ("", "the file is empty"),
        ("  \n", "the file is empty"),
        ("redis://a/0\nredis://b/0\n", "more than one line"),
        (b"\xff\xfe", "cannot read the broker URL"),
    ],
)
def test_a_bad_file_is_one_clear_error_naming_it(tmp_path, content, said):
    path = tmp_path / "url"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(BrokerUrlFileError, match=said) as caught:
        read_url_file(str(path))
    assert str(caught.value).startswith(f"EBBTIDE_BROKER_URL_FILE={path}: ")
    assert "\n" not in str(caught.value)


def test_an_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        path = tmp_path  # root reads any file; a directory cannot be read as one
    else:
        path = tmp_path / "url"
        path.write_text("redis://x/0")
        path.chmod(0)
    with pytest.raises(BrokerUrlFileError, match="cannot read the broker URL"):
        read_url_file(str(path))


def test_the_cli_says_what_is_wrong_with_the_file_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EBBTIDE_BROKER_URL_FILE", str(tmp_path / "missing"))
    monkeypatch.setenv("EBBTIDE_BROKER_URL", "redis://127.0.0.1:1/0")
    assert cli.main(["stats"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "EBBTIDE_BROKER_URL_FILE=" in err[0] and "missing" in err[0]


def test_the_app_reads_the_file_when_it_opens_the_broker(tmp_path, monkeypatch):
    from ebbtide.brokers import resolve_url

    path = tmp_path / "url"
    path.write_text("amqp://guest:guest@mq:5672/%2F")
    monkeypatch.setenv("EBBTIDE_BROKER_URL_FILE", str(path))
    monkeypatch.setenv("EBBTIDE_BROKER_URL", "redis://127.0.0.1:1/0")
    assert resolve_url(None) == "amqp://guest:guest@mq:5672/%2F"
    assert resolve_url("redis://given/0") == "redis://given/0"

"""Settings.from_env (switchboard/settings.py): typed parsing, DATABASE_URL, loud failures."""

from __future__ import annotations

import dataclasses

import pytest

from switchboard.settings import DEV_JWT_SECRET, Settings, SettingsError


def test_an_empty_environment_gives_the_defaults():
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({}).is_dev_secret


def test_ints_floats_and_strings_are_parsed():
    settings = Settings.from_env({
        "SWITCHBOARD_PORT": "9001",
        "SWITCHBOARD_SHARDS_PER_REGION": " 4 ",
        "SWITCHBOARD_SEND_RATE_PER_S": "2.5",
        "SWITCHBOARD_AUTH_TIMEOUT_S": "3",
        "SWITCHBOARD_HOST": "0.0.0.0",
        "SWITCHBOARD_JWT_SECRET": "s3cret",
    })
    assert (settings.port, settings.shards_per_region) == (9001, 4)
    assert (settings.send_rate_per_s, settings.auth_timeout_s) == (2.5, 3.0)
    assert isinstance(settings.auth_timeout_s, float)
    assert (settings.host, settings.jwt_secret) == ("0.0.0.0", "s3cret")
    assert not settings.is_dev_secret


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "On"])
def test_true_booleans(raw):
    assert Settings.from_env({"SWITCHBOARD_DEV_MODE": raw}).dev_mode is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "OFF"])
def test_false_booleans(raw):
    assert Settings.from_env({"SWITCHBOARD_DEV_MODE": raw}).dev_mode is False


def test_tuples_are_comma_separated_and_trimmed():
    settings = Settings.from_env({"SWITCHBOARD_REGIONS": " local, eu ,,us-east ", "SWITCHBOARD_REGION": "eu"})
    assert settings.regions == ("local", "eu", "us-east")


def test_database_url_is_read_from_its_conventional_name():
    url = "postgresql://u:p@db:5432/switchboard"
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url
    assert Settings.from_env({"SWITCHBOARD_DATABASE_URL": url}).database_url is None


def test_empty_values_keep_the_default():
    settings = Settings.from_env({"SWITCHBOARD_PORT": "", "DATABASE_URL": "", "SWITCHBOARD_JWT_SECRET": ""})
    assert (settings.port, settings.database_url, settings.jwt_secret) == (8000, None, DEV_JWT_SECRET)


def test_unrelated_variables_are_ignored():
    assert Settings.from_env({"PORT": "1", "SWITCHBOARD_NOT_A_SETTING": "x"}) == Settings()


@pytest.mark.parametrize(
    "name, raw",
    [
        ("SWITCHBOARD_PORT", "eighty"),
        ("SWITCHBOARD_PORT", "80.5"),
        ("SWITCHBOARD_SEND_BURST", "1e3"),
        ("SWITCHBOARD_SEND_RATE_PER_S", "fast"),
        ("SWITCHBOARD_DEV_MODE", "maybe"),
        ("SWITCHBOARD_DEV_MODE", "2"),
    ],
)
def test_bad_values_raise_settings_error_naming_the_variable(name, raw):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: raw})


def test_settings_error_is_a_value_error():
    assert issubclass(SettingsError, ValueError)


def test_the_region_is_added_to_the_regions():
    assert Settings.from_env({"SWITCHBOARD_REGION": "eu"}).regions == ("local", "eu")
    settings = Settings.from_env({"SWITCHBOARD_REGION": "eu", "SWITCHBOARD_REGIONS": "us"})
    assert (settings.region, settings.regions) == ("eu", ("us", "eu"))


def test_a_region_already_listed_is_not_added_twice():
    settings = Settings.from_env({"SWITCHBOARD_REGION": "eu", "SWITCHBOARD_REGIONS": "eu,us"})
    assert settings.regions == ("eu", "us")


def test_settings_are_frozen_and_replace_makes_a_copy():
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
    changed = settings.replace(port=1)
    assert (settings.port, changed.port) == (8000, 1)


def test_from_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_SEND_BURST", "7")
    assert Settings.from_env().send_burst == 7

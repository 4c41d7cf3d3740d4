"""Settings (switchboard/settings.py): typed parsing, DATABASE_URL, ranges, exposure, redaction."""

from __future__ import annotations

import dataclasses
import math
import pickle
import re

import pytest
from switchboard.settings import (
    DEV_JWT_SECRET,
    RANGES,
    Settings,
    SettingsError,
    redact_url,
    unknown_variables,
)


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


# ---- ranges (Settings.__post_init__) -----------------------------------------------------------

MIB = 1024 * 1024
# Other settings a value needs to be valid with (the cross-field bounds), for the values accepted.
SMALL_FRAMES = {"max_frame_bytes": 1024, "max_body_bytes": 1024, "max_auth_frame_bytes": 512}
CONTEXT = {
    "max_frame_bytes": {"max_body_bytes": 1024, "max_auth_frame_bytes": 512, "socket_outbox_bytes": 128 * MIB},
    "socket_outbox_bytes": SMALL_FRAMES,
    "sockets_per_replica": {"target_sockets_per_replica": 1},
}
RATE = ((0.0, -1.0), (1_000_000.5,), (0.001, 1_000_000.0))
COUNT = ((0, -1), (), (1,))
WAIT = ((0.0, -1.0), (300.5,), (0.001, 300.0))
# field: (values below its range, values above it, boundary values accepted)
CASES = {
    "port": ((0, -1), (65536,), (1, 65535)),
    "db_statement_timeout_s": ((0.0, 0.05), (3600.5,), (0.1, 3600.0)),
    "shards_per_region": ((0,), (65,), (1, 64)),
    "min_replicas": COUNT,
    "max_replicas": COUNT,
    "sockets_per_replica": COUNT,
    "target_sockets_per_replica": COUNT,
    "upscale_delay_s": ((-0.5,), (3600.5,), (0.0, 3600.0)),
    "downscale_delay_s": ((-0.5,), (86400.5,), (0.0, 86400.0)),
    "http_slots_per_replica": COUNT,
    "send_rate_per_s": RATE,
    "send_burst": COUNT,
    "frame_rate_per_s": RATE,
    "frame_burst": COUNT,
    "membership_rate_per_s": RATE,
    "membership_burst": COUNT,
    "http_rate_per_s": RATE,
    "http_burst": COUNT,
    "max_body_bytes": COUNT,
    "max_frame_bytes": ((1023, 0), (16 * MIB + 1,), (1024, 16 * MIB)),
    "max_auth_frame_bytes": ((511, 0), (), (512,)),
    "max_json_depth": ((1, 0), (1001,), (2, 1000)),
    "max_members": ((1, 0), (), (2,)),
    "history_limit_max": ((0,), (10_001,), (1, 10_000)),
    "conversation_page_max": ((0,), (10_001,), (1, 10_000)),
    "auth_timeout_s": WAIT,
    "flood_strikes": COUNT,
    "socket_outbox_bytes": ((8191, 0), (), (8192,)),
    "preauth_sockets_per_address": COUNT,
    "preauth_sockets_max": COUNT,
    "sockets_per_user": COUNT,
    "session_tasks_max": COUNT,
    "retention_days": COUNT,
    "retention_events": COUNT,
    "commit_batch_max": COUNT,
    "commit_events_max": COUNT,
    "shard_queue_max": COUNT,
    "gateway_queue_max": COUNT,
    "send_timeout_s": WAIT,
    "checkpoint_interval_s": ((0.5, -1.0), (), (0.0, 1.0)),
}
FIELDS = {field.name: field for field in dataclasses.fields(Settings)}
NUMERIC = sorted(name for name, field in FIELDS.items() if field.type in ("int", "float"))
FLOATS = sorted(name for name, field in FIELDS.items() if field.type == "float")


def var(name: str) -> str:
    return "DATABASE_URL" if name == "database_url" else f"SWITCHBOARD_{name.upper()}"


def refused(name: str, value: object) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        Settings(**{name: value})
    message = str(caught.value)
    assert "\n" not in message
    return caught.value


def test_every_numeric_setting_has_one_range_and_a_test_case():
    assert sorted(RANGES) == NUMERIC
    assert sorted(CASES) == NUMERIC


@pytest.mark.parametrize("name, value", [(n, v) for n, (below, above, _) in CASES.items() for v in below + above])
def test_a_value_out_of_range_is_refused_naming_the_variable(name, value):
    message = str(refused(name, value))
    assert message.startswith(f"{var(name)}={value} is out of range: it must be ")
    assert message.endswith(RANGES[name].describe())


@pytest.mark.parametrize("name, value", [(n, v) for n, (below, above, _) in CASES.items() for v in below + above])
def test_a_value_out_of_range_in_the_environment_is_refused_the_same_way(name, value):
    with pytest.raises(SettingsError, match=rf"^{re.escape(var(name))}={re.escape(str(value))} is out of range"):
        Settings.from_env({var(name): str(value)})


@pytest.mark.parametrize("name, value", [(n, v) for n, (_, _, accepted) in CASES.items()
                                         for v in accepted + (FIELDS[n].default,)])
def test_the_default_and_the_boundaries_are_accepted(name, value):
    settings = Settings(**{name: value}, **CONTEXT.get(name, {}))
    assert getattr(settings, name) == value


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", FLOATS)
def test_floats_must_be_finite(name, value):
    message = str(refused(name, value))
    assert message == f"{var(name)}={value} is not a finite number: it must be {RANGES[name].describe()}"


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity"])
@pytest.mark.parametrize("name", FLOATS)
def test_from_env_refuses_nan_and_infinity(name, raw):
    with pytest.raises(SettingsError, match=rf"^{re.escape(var(name))}='{raw}' is not a finite number"):
        Settings.from_env({var(name): raw})


def test_the_range_messages_read_as_documented():
    assert str(refused("send_rate_per_s", 0.0)) == (
        "SWITCHBOARD_SEND_RATE_PER_S=0.0 is out of range: it must be greater than 0 and at most 1000000")
    assert str(refused("send_burst", 0)) == "SWITCHBOARD_SEND_BURST=0 is out of range: it must be at least 1"
    assert str(refused("checkpoint_interval_s", 0.5)) == (
        "SWITCHBOARD_CHECKPOINT_INTERVAL_S=0.5 is out of range: it must be 0 (off) or at least 1")


@pytest.mark.parametrize(
    "name, value",
    [("port", "80"), ("port", 80.0), ("port", True), ("send_burst", None), ("send_rate_per_s", "1"),
     ("dev_mode", 1), ("regions", ["local"]), ("regions", "local"), ("trusted_proxies", (1,)), ("host", None)],
)
def test_values_of_the_wrong_type_are_refused(name, value):
    assert str(refused(name, value)).startswith(f"{var(name)}={value!r} is not a valid ")


def test_an_int_is_a_valid_float():
    assert Settings(send_rate_per_s=10, checkpoint_interval_s=0).send_rate_per_s == 10


def test_replace_checks_too():
    with pytest.raises(SettingsError, match="SWITCHBOARD_PORT=0"):
        Settings().replace(port=0)


# ---- cross-field bounds ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, other, changes",
    [
        ("max_body_bytes", "max_frame_bytes", {"max_body_bytes": 65537}),
        ("max_body_bytes", "max_frame_bytes", {"max_frame_bytes": 8192, "max_body_bytes": 8193}),
        ("max_auth_frame_bytes", "max_frame_bytes", {"max_auth_frame_bytes": 65537}),
        ("min_replicas", "max_replicas", {"min_replicas": 5}),
        ("min_replicas", "max_replicas", {"min_replicas": 2, "max_replicas": 1}),
        ("target_sockets_per_replica", "sockets_per_replica", {"target_sockets_per_replica": 4001}),
        ("socket_outbox_bytes", "max_frame_bytes", {"socket_outbox_bytes": 8 * 65536 - 1}),
        ("socket_outbox_bytes", "max_frame_bytes", {"max_frame_bytes": MIB, "max_body_bytes": 1024}),
    ],
)
def test_cross_field_bounds_name_both_variables(name, other, changes):
    with pytest.raises(SettingsError) as caught:
        Settings(**changes)
    message = str(caught.value)
    assert message.startswith(f"{var(name)}=") and f"{var(other)}=" in message
    assert "is out of range: it must be at " in message


@pytest.mark.parametrize(
    "changes",
    [
        {"max_body_bytes": 65536},
        {"max_auth_frame_bytes": 65536},
        {"min_replicas": 2},
        {"target_sockets_per_replica": 2000},
        {"socket_outbox_bytes": 8 * 65536},
        {"max_frame_bytes": 1024, "max_body_bytes": 1024, "max_auth_frame_bytes": 1024},
    ],
)
def test_cross_field_bounds_admit_equality(changes):
    Settings(**changes)


def test_a_cross_field_violation_from_the_environment_names_both():
    with pytest.raises(SettingsError, match="SWITCHBOARD_MAX_BODY_BYTES=70000 .* SWITCHBOARD_MAX_FRAME_BYTES=65536"):
        Settings.from_env({"SWITCHBOARD_MAX_BODY_BYTES": "70000"})


# ---- names, origins, networks ------------------------------------------------------------------

@pytest.mark.parametrize("region", ["local", "eu", "us-east-1", "0", "a" * 32, "9-"])
def test_region_names_accepted(region):
    assert Settings(region=region, regions=(region,)).region == region


@pytest.mark.parametrize("region", ["", "EU", "-eu", "eu_west", "eu west", "a" * 33, "eu.1", "région"])
def test_region_names_refused(region):
    with pytest.raises(SettingsError, match="^SWITCHBOARD_REGION="):
        Settings(region=region)
    with pytest.raises(SettingsError, match="^SWITCHBOARD_REGIONS holds"):
        Settings(regions=("local", region))


def test_an_invalid_region_from_the_environment_is_named():
    with pytest.raises(SettingsError, match="^SWITCHBOARD_REGION='EU'"):
        Settings.from_env({"SWITCHBOARD_REGION": "EU"})
    with pytest.raises(SettingsError, match="^SWITCHBOARD_REGIONS holds 'Us'"):
        Settings.from_env({"SWITCHBOARD_REGIONS": "local,Us"})


@pytest.mark.parametrize("name", ["regions", "namespace", "jwt_secret"])
def test_required_values_may_not_be_empty(name):
    empty = () if name == "regions" else ""
    assert str(refused(name, empty)).startswith(f"{var(name)} is empty")


@pytest.mark.parametrize(
    "origin",
    ["*", "https://chat.example.com", "http://localhost:3000", "http://127.0.0.1:8000", "http://[::1]:8080",
     "HTTPS://Chat.Example.COM", "https://chat.example.com:443"],
)
def test_origins_accepted(origin):
    assert Settings(allowed_origins=(origin,)).allowed_origins == (origin,)


@pytest.mark.parametrize(
    "origin",
    ["", "chat.example.com", "ftp://chat.example.com", "ws://chat.example.com", "https://chat.example.com/",
     "https://chat.example.com/app", "https://chat.example.com?x=1", "https://chat.example.com?",
     "https://chat.example.com#top", "https://user@chat.example.com", "https://chat.example.com:99999",
     "https://chat.example.com:port", "https://", "null", " https://chat.example.com", "https://a b.com", "**"],
)
def test_origins_refused(origin):
    with pytest.raises(SettingsError, match="^SWITCHBOARD_ALLOWED_ORIGINS holds .* which is not an origin"):
        Settings(allowed_origins=("https://ok.example", origin))


def test_origins_from_the_environment():
    settings = Settings.from_env({"SWITCHBOARD_ALLOWED_ORIGINS": "https://a.example, http://b.example:8080"})
    assert settings.allowed_origins == ("https://a.example", "http://b.example:8080")
    with pytest.raises(SettingsError, match="SWITCHBOARD_ALLOWED_ORIGINS holds 'https://a.example/'"):
        Settings.from_env({"SWITCHBOARD_ALLOWED_ORIGINS": "https://a.example/"})


@pytest.mark.parametrize("proxy", ["10.0.0.0/8", "10.1.2.3/8", "192.168.0.7", "::1", "fd00::/8", "0.0.0.0/0"])
def test_trusted_proxies_accepted(proxy):
    Settings(trusted_proxies=(proxy,))


@pytest.mark.parametrize("proxy", ["", "10.0.0.0/33", "10.0.0.256", "localhost", "fd00::/129", "10.0.0.0/8/8"])
def test_trusted_proxies_refused(proxy):
    with pytest.raises(SettingsError, match="^SWITCHBOARD_TRUSTED_PROXIES holds .* which is not a network"):
        Settings(trusted_proxies=(proxy,))


def test_no_trusted_proxy_is_valid():
    assert Settings(trusted_proxies=()).trusted_proxies == ()


# ---- exposure ----------------------------------------------------------------------------------

STRONG_SECRET = "k3J9-vQ2xL7pZ0rT5wY8nB4mC6dF1gH2"  # 32 bytes


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.8.7", "::1", "[::1]", "localhost", "LOCALHOST",
                                  "::ffff:127.0.0.1"])
def test_loopback_hosts_pass_the_exposure_check_whatever_else(host):
    settings = Settings(host=host, dev_mode=True)  # the development secret, too
    assert settings.is_loopback_host
    assert settings.exposure_problems() == []
    settings.check_exposure()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "192.168.0.1", "::ffff:10.0.0.1",
                                  "chat.example.com", "localhost.example.com"])
def test_other_hosts_including_the_wildcards_are_not_loopback(host):
    settings = Settings(host=host)
    assert not settings.is_loopback_host
    with pytest.raises(SettingsError, match="SWITCHBOARD_JWT_SECRET is the public development default"):
        settings.check_exposure()


def test_the_development_secret_is_an_exposure_problem():
    assert Settings(host="0.0.0.0").exposure_problems() == [(
        "SWITCHBOARD_HOST=0.0.0.0 serves other machines, but SWITCHBOARD_JWT_SECRET is the public development "
        "default: set a random secret of at least 32 bytes")]


@pytest.mark.parametrize("secret", ["s3cret", STRONG_SECRET[:31], "é" * 15])
def test_a_short_secret_is_an_exposure_problem(secret):
    problems = Settings(host="0.0.0.0", jwt_secret=secret).exposure_problems()
    assert len(problems) == 1
    assert problems[0].startswith("SWITCHBOARD_HOST=0.0.0.0 serves other machines, but SWITCHBOARD_JWT_SECRET is only")
    assert secret not in problems[0]


@pytest.mark.parametrize("secret", [STRONG_SECRET, "é" * 16])  # 32 bytes either way: UTF-8 bytes count
def test_a_secret_of_32_bytes_is_enough(secret):
    Settings(host="0.0.0.0", jwt_secret=secret).check_exposure()


def test_dev_mode_is_an_exposure_problem():
    settings = Settings(host="0.0.0.0", jwt_secret=STRONG_SECRET, dev_mode=True)
    with pytest.raises(SettingsError, match="^SWITCHBOARD_HOST=0.0.0.0 serves other machines, but SWITCHBOARD_DEV_MODE is on"):
        settings.check_exposure()


def test_every_problem_is_listed_and_the_first_is_raised():
    settings = Settings(host="10.0.0.5", dev_mode=True)
    problems = settings.exposure_problems()
    assert len(problems) == 2 and all("\n" not in problem for problem in problems)
    with pytest.raises(SettingsError) as caught:
        settings.check_exposure()
    assert str(caught.value) == problems[0]


def test_the_exposure_check_is_not_run_at_construction():
    assert Settings.from_env({"SWITCHBOARD_HOST": "0.0.0.0", "SWITCHBOARD_DEV_MODE": "1"}).exposure_problems()


# ---- secrets are never shown -------------------------------------------------------------------

def test_repr_and_str_hide_the_secret():
    settings = Settings(jwt_secret=STRONG_SECRET + "0123456789abcdef")
    for text in (repr(settings), str(settings), f"{settings}"):
        assert STRONG_SECRET not in text
        assert "jwt_secret='<set, 48 bytes>'" in text


def test_repr_names_the_development_default_without_showing_it():
    assert DEV_JWT_SECRET not in repr(Settings())
    assert "jwt_secret='<development default>'" in repr(Settings())


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://bob:hunter2@db:5432/switchboard", "postgresql://bob:***@db:5432/switchboard"),
        ("postgresql+psycopg://bob:hunter2@db/sb?sslmode=require", "postgresql+psycopg://bob:***@db/sb?sslmode=require"),
        ("postgresql://bob:hun%40ter2@db/sb", "postgresql://bob:***@db/sb"),
        ("postgresql://db/sb?user=bob&password=hunter2", "postgresql://db/sb?user=bob&password=***"),
        ("postgresql://bob:hunter2@db/sb?sslpassword=hunter2", "postgresql://bob:***@db/sb?sslpassword=***"),
        ("host=db user=bob password=hunter2", "host=db user=bob password=***"),
    ],
)
def test_repr_and_str_hide_the_database_password(url, shown):
    settings = Settings(database_url=url)
    assert redact_url(url) == shown
    for text in (repr(settings), str(settings)):
        assert "hunter2" not in text and "hun%40ter2" not in text
        assert f"database_url={shown!r}" in text
    assert settings.database_url == url  # only the showing changes


@pytest.mark.parametrize("url", ["postgresql://bob@db:5432/sb", "postgresql:///sb?host=/tmp", "postgresql://db/sb"])
def test_a_url_without_a_password_is_shown_as_is(url):
    assert f"database_url={url!r}" in repr(Settings(database_url=url))


def test_no_database_url_shows_none():
    assert "database_url=None" in repr(Settings())


def test_errors_do_not_show_the_secret():
    with pytest.raises(SettingsError) as caught:
        Settings(jwt_secret=b"binary-secret-value")  # type: ignore[arg-type]
    assert "binary-secret-value" not in str(caught.value)


# ---- equality, hashing, pickling ---------------------------------------------------------------

def test_settings_survive_a_pickle_round_trip():
    settings = Settings(jwt_secret=STRONG_SECRET, database_url="postgresql://bob:hunter2@db/sb",
                        allowed_origins=("https://a.example",), regions=("local", "eu"), send_rate_per_s=2.5)
    copy = pickle.loads(pickle.dumps(settings))
    assert copy == settings and hash(copy) == hash(settings)
    assert (copy.jwt_secret, copy.database_url) == (STRONG_SECRET, "postgresql://bob:hunter2@db/sb")
    assert repr(copy) == repr(settings)


def test_equality_and_hashing_see_every_field():
    assert Settings() == Settings() and hash(Settings()) == hash(Settings())
    assert len({Settings(), Settings(), Settings(jwt_secret=STRONG_SECRET)}) == 2
    assert Settings(jwt_secret=STRONG_SECRET) != Settings(jwt_secret=STRONG_SECRET + "x")


def test_an_unknown_switchboard_variable_is_named_with_the_nearest_setting():
    lines = unknown_variables({"SWITCHBOARD_SHARDS": "0", "SWITCHBOARD_PORT": "1", "PATH": "/bin",
                               "SWITCHBOARD_HAPROXY_BIND": "127.0.0.1", "SWITCHBOARD_ZZZ": "1"})
    assert lines == ["SWITCHBOARD_SHARDS is not a Switchboard setting and is ignored; "
                     "did you mean SWITCHBOARD_SHARDS_PER_REGION?",
                     "SWITCHBOARD_ZZZ is not a Switchboard setting and is ignored"]


def test_every_setting_and_the_documented_other_variables_are_known():
    environ = {name: "x" for name in ("DATABASE_URL", "SWITCHBOARD_DATA_DIR", "SWITCHBOARD_JWT_SECRET",
                                      "SWITCHBOARD_RAY_OWNER", "SWITCHBOARD_WEB_SCREENSHOT")}
    assert unknown_variables(environ) == []


def test_a_regions_mirror_is_the_next_region_by_default():
    settings = Settings(region="eu", regions=("eu", "us", "ap"))
    assert [settings.mirror_of(r) for r in ("eu", "us", "ap")] == ["us", "ap", "eu"]
    assert Settings().mirror_of("local") is None  # a lone region has no mirror


def test_listed_mirrors_win_over_the_default():
    settings = Settings.from_env({"SWITCHBOARD_REGIONS": "eu,us,ap", "SWITCHBOARD_REGION": "eu",
                                  "SWITCHBOARD_REGION_MIRRORS": "eu=ap, ap = us"})
    assert [settings.mirror_of(r) for r in ("eu", "us", "ap")] == ["ap", "ap", "us"]  # us: the next


@pytest.mark.parametrize("mirrors", [("eu=eu",), ("eu=mars",), ("mars=eu",), ("eu",), ("eu=us", "eu=ap")])
def test_mirrors_that_name_no_other_region_are_refused(mirrors):
    with pytest.raises(SettingsError, match="SWITCHBOARD_REGION_MIRRORS"):
        Settings(region="eu", regions=("eu", "us", "ap"), region_mirrors=mirrors)

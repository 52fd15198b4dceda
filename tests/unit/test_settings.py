"""Settings (contract section 5): defaults, and values that cannot work refused at start with a
message naming the variable."""

from __future__ import annotations

import pytest

from streams.settings import Settings, SettingsError


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.app_id, s.partitions, s.cache_ttl_s, s.watch_thresholds) == (
        "segment-stream", 8, 5.0, (0.5,))
    assert (s.max_future_ms, s.produce_timeout_ms) == (3_600_000, 30_000)
    assert s.advertised_url == "http://127.0.0.1:6066"
    # None: min(3, brokers in the cluster), read by the worker at start (runtime/topics.py).
    assert s.replication_factor is None
    assert Settings.from_env({"SEGMENTS_REPLICATION_FACTOR": "2"}).replication_factor == 2
    assert (s.names.changes_topic, s.names.counts_topic) == (
        "segment-count-changes", "segment-counts")
    assert Settings.from_env({"SEGMENTS_COUNTS_TOPIC": "c"}).names.counts_topic == "c"


@pytest.mark.parametrize(("env", "words"), [
    ({"SEGMENTS_CACHE_TTL_S": "inf"}, "SEGMENTS_CACHE_TTL_S"),
    ({"SEGMENTS_CACHE_TTL_S": "nan"}, "SEGMENTS_CACHE_TTL_S"),
    ({"SEGMENTS_CACHE_TTL_S": "-1"}, "SEGMENTS_CACHE_TTL_S"),
    ({"SEGMENTS_CACHE_TTL_S": "1e9"}, "SEGMENTS_CACHE_TTL_S"),
    ({"SEGMENTS_WEB_HOST": "0.0.0.0"}, "SEGMENTS_ADVERTISED_URL"),
    ({"SEGMENTS_WEB_HOST": "::"}, "SEGMENTS_ADVERTISED_URL"),
    ({"SEGMENTS_WEB_PORT": "70000"}, "SEGMENTS_WEB_PORT"),
    ({"SEGMENTS_PARTITIONS": "0"}, "SEGMENTS_PARTITIONS"),
    ({"SEGMENTS_REPLICATION_FACTOR": "0"}, "SEGMENTS_REPLICATION_FACTOR"),
    ({"SEGMENTS_APP_ID": "my app"}, "SEGMENTS_APP_ID"),
    ({"SEGMENTS_APP_ID": "a" * 240}, "SEGMENTS_APP_ID"),
    ({"SEGMENTS_INPUT_TOPIC": "in/put"}, "SEGMENTS_INPUT_TOPIC"),
    ({"SEGMENTS_WATCH_THRESHOLDS": "0.5,nan"}, "SEGMENTS_WATCH_THRESHOLDS"),
    ({"SEGMENTS_WATCH_THRESHOLDS": "2"}, "SEGMENTS_WATCH_THRESHOLDS"),
    ({"SEGMENTS_LOG_LEVEL": "verbose"}, "SEGMENTS_LOG_LEVEL"),
    ({"SEGMENTS_ADVERTISED_URL": "worker-1:6066"}, "SEGMENTS_ADVERTISED_URL"),
    ({"SEGMENTS_MAX_FUTURE_MS": "-5"}, "SEGMENTS_MAX_FUTURE_MS"),
    ({"SEGMENTS_PRODUCE_TIMEOUT_MS": "10"}, "SEGMENTS_PRODUCE_TIMEOUT_MS"),
    ({"SEGMENTS_INSTANCE_ID": "worker 1"}, "SEGMENTS_INSTANCE_ID"),
    ({"SEGMENTS_INSTANCE_ID": "w/1"}, "SEGMENTS_INSTANCE_ID"),
    ({"SEGMENTS_INSTANCE_ID": "é"}, "SEGMENTS_INSTANCE_ID"),
    ({"SEGMENTS_INSTANCE_ID": ".."}, "SEGMENTS_INSTANCE_ID"),
    ({"SEGMENTS_INSTANCE_ID": "   "}, "SEGMENTS_INSTANCE_ID"),
    ({"SEGMENTS_INSTANCE_ID": "w" * 250}, "SEGMENTS_INSTANCE_ID"),
    ({"SEGMENTS_SESSION_TIMEOUT_MS": "5000"}, "SEGMENTS_SESSION_TIMEOUT_MS"),
    ({"SEGMENTS_SESSION_TIMEOUT_MS": "120000"}, "SEGMENTS_SESSION_TIMEOUT_MS"),
    # security (contract section 10)
    ({"SEGMENTS_API_KEYS_FILE": "/dev/null"}, "SEGMENTS_CLUSTER_SECRET"),
    ({"SEGMENTS_CLUSTER_SECRET": "short"}, "SEGMENTS_CLUSTER_SECRET"),
    ({"SEGMENTS_CLUSTER_SECRET": "replace-with-a-random-secret"}, ".env.example"),
    ({"REDIS_URL": "redis://:replace-with-a-random-password@redis:6379/0"}, "REDIS_URL"),
    ({"SEGMENTS_CLUSTER_SECRET_PREVIOUS": "a-previous-secret-alone"}, "needs"),
    ({"SEGMENTS_API_KEYS_FILE": "/nonexistent/keys.json",
      "SEGMENTS_CLUSTER_SECRET": "s" * 32}, "SEGMENTS_API_KEYS_FILE"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_USERNAME"),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
    ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
    ({"KAFKA_SSL_CAFILE": "/etc/hostname"}, "does not use TLS"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent.pem"},
     "KAFKA_SSL_CAFILE"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "/etc/hostname"},
     "KAFKA_SSL_KEYFILE"),
])
def test_values_that_cannot_work_are_refused(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert words in str(err.value)


def test_static_membership() -> None:
    dynamic = Settings.from_env({})
    assert (dynamic.instance_id, dynamic.session_timeout_ms) == ("", 6_000)
    # A static member's session outlasts a restart, unless told otherwise.
    static = Settings.from_env({"SEGMENTS_INSTANCE_ID": " segments-0.eu_1 "})
    assert (static.instance_id, static.session_timeout_ms) == ("segments-0.eu_1", 30_000)
    assert Settings.from_env({"SEGMENTS_INSTANCE_ID": "w" * 249,
                              "SEGMENTS_SESSION_TIMEOUT_MS": "10000"}).session_timeout_ms == 10_000
    assert Settings.from_env({"SEGMENTS_SESSION_TIMEOUT_MS": "20000"}).session_timeout_ms == 20_000


def test_every_interface_with_an_advertised_url() -> None:
    s = Settings.from_env({"SEGMENTS_WEB_HOST": "0.0.0.0",
                           "SEGMENTS_ADVERTISED_URL": "http://worker-1:6066/"})
    assert (s.web_host, s.advertised_url) == ("0.0.0.0", "http://worker-1:6066")


def test_an_ipv6_host_is_bracketed_in_the_url() -> None:
    assert Settings.from_env({"SEGMENTS_WEB_HOST": "::1"}).advertised_url == "http://[::1]:6066"


def test_secrets_stay_out_of_the_settings_repr() -> None:
    s = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_USERNAME": "u",
                           "KAFKA_SASL_PASSWORD": "kafka-pass-1", "SEGMENTS_CLUSTER_SECRET":
                           "cluster-secret-123", "REDIS_URL": "redis://:redis-pass-1@r:6379/0"})
    assert s.kafka_security.sasl and s.kafka_security.tls
    for secret in ("kafka-pass-1", "cluster-secret-123", "redis-pass-1"):
        assert secret not in repr(s)

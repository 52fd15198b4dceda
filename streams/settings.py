"""Settings from the environment (contract section 5)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from streams.codec.names import Names
from streams.domain.store import DEFAULT_GRACE_MS
from streams.exceptions import SegmentStreamError


class SettingsError(SegmentStreamError):
    """An environment variable holds a value the product cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0,
         maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name}={value} must be <= {maximum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0,
           maximum: float = math.inf) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name}={raw!r} must be a finite number")
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name}={value} must be between {minimum} and {maximum}")
    return value


def _thresholds(raw: str) -> tuple[float, ...]:
    values: list[float] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise SettingsError(f"SEGMENTS_WATCH_THRESHOLDS: {part!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise SettingsError(f"SEGMENTS_WATCH_THRESHOLDS: {value} is outside [0, 1]")
        values.append(value)
    if not values:
        raise SettingsError("SEGMENTS_WATCH_THRESHOLDS names no threshold")
    return tuple(sorted(set(values)))


def _url(env: Mapping[str, str], name: str) -> str:
    raw = (env.get(name) or "").strip()
    scheme, sep, rest = raw.partition("://")
    if raw and (scheme not in ("http", "https") or not sep or not rest.strip("/")):
        raise SettingsError(f"{name}={raw!r} is not an http:// or https:// URL")
    return raw.rstrip("/")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or "").strip().upper() or default
    if value not in choices:
        raise SettingsError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# HMAC-SHA256 keys shorter than this are guessable offline from one signed request.
MIN_CLUSTER_SECRET = 16
PLACEHOLDER = "replace-with-"  # .env.example's values: known to everyone


@dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client the product creates connects (contract section 10)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    username: str = ""
    password: str = field(default="", repr=False)
    cafile: str = ""  # empty with TLS: the system's trusted CAs
    certfile: str = ""  # a client certificate, for brokers that ask for one
    keyfile: str = ""

    def __post_init__(self) -> None:
        if self.sasl and not (self.username and self.password):
            raise SettingsError(f"KAFKA_SECURITY_PROTOCOL={self.protocol} needs "
                                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        if bool(self.certfile) != bool(self.keyfile):
            raise SettingsError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together")
        for name, path in (("KAFKA_SSL_CAFILE", self.cafile),
                           ("KAFKA_SSL_CERTFILE", self.certfile),
                           ("KAFKA_SSL_KEYFILE", self.keyfile)):
            if path and not self.tls:
                raise SettingsError(f"{name} is set but KAFKA_SECURITY_PROTOCOL="
                                    f"{self.protocol} does not use TLS")
            if path and not os.access(path, os.R_OK):
                raise SettingsError(f"{name}={path!r} is not a readable file")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KafkaSecurity:
        return cls(
            protocol=_choice(env, "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", KAFKA_PROTOCOLS),
            sasl_mechanism=_choice(env, "KAFKA_SASL_MECHANISM", "PLAIN", SASL_MECHANISMS),
            username=env.get("KAFKA_SASL_USERNAME") or "",
            password=env.get("KAFKA_SASL_PASSWORD") or "",
            cafile=env.get("KAFKA_SSL_CAFILE") or "",
            certfile=env.get("KAFKA_SSL_CERTFILE") or "",
            keyfile=env.get("KAFKA_SSL_KEYFILE") or "",
        )


# Kafka's rule for topic names; the app id is part of the internal topics' names.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_LONGEST_SUFFIX = len("-emitted-counts-changelog")
# Hosts that mean "every interface": not an address another worker can reach.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", "*"})


# Kafka's rule for a group.instance.id (JoinGroupRequest.validateGroupInstanceId).
_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,249}")
# A static member's session must outlast its restart (a stop, then a start to the join).
STATIC_SESSION_TIMEOUT_MS = 30_000
DYNAMIC_SESSION_TIMEOUT_MS = 6_000  # the brokers' default group.min.session.timeout.ms


def _instance_id(env: Mapping[str, str]) -> str:
    raw = env.get("SEGMENTS_INSTANCE_ID")
    if raw is None or raw == "":
        return ""
    value = raw.strip()
    if not _INSTANCE_ID.fullmatch(value) or value in (".", ".."):
        raise SettingsError(
            f"SEGMENTS_INSTANCE_ID={raw!r} is not usable as a Kafka group.instance.id (1-249 "
            "letters, digits, '.', '_', '-'; not '.' or '..'); give each worker its own, stable "
            "across restarts (e.g. the pod name of a StatefulSet)")
    return value


def _name(env: Mapping[str, str], name: str, default: str, reserve: int = 0) -> str:
    value = (env.get(name) or "").strip() or default
    if not _TOPIC_NAME.fullmatch(value) or len(value) + reserve > 249:
        raise SettingsError(
            f"{name}={value!r} is not usable in a Kafka topic name (letters, digits, '.', '_', "
            f"'-'; at most {249 - reserve} characters)")
    return value


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    app_id: str = "segment-stream"
    partitions: int = 8
    input_topic: str = "recommendation-weights"
    dlq_topic: str = "recommendation-weights.dlq"
    changes_topic: str = "segment-count-changes"
    counts_topic: str = "segment-counts"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    cache_ttl_s: float = 5.0
    watch_thresholds: tuple[float, ...] = (0.5,)
    change_interval_ms: int = 1000
    # Of the topics the worker creates; None: min(3, brokers in the cluster), read at start.
    replication_factor: int | None = None
    data_dir: str = field(default="")
    log_level: str = "WARNING"
    # The URL the other workers use to reach this one's HTTP endpoint (SEGMENTS_ADVERTISED_URL);
    # set it when binding 0.0.0.0 (e.g. in a container). Empty: http://{web_host}:{web_port}.
    advertised_url: str = ""
    # An event's ts may lie at most this far after its record's Kafka timestamp.
    max_future_ms: int = 3_600_000
    # Contract §2, aging: withdrawals older than a partition's greatest ts minus this are
    # forgotten; older events of recommendations without state are late (dead letters).
    grace_ms: int = DEFAULT_GRACE_MS
    # How long a write to Kafka may stay unacknowledged before the batch that made it fails
    # (and its records are read again).
    produce_timeout_ms: int = 30_000
    # How long a worker waits for another worker's part of an answer.
    peer_timeout_ms: int = 2_000
    # How many other workers keep a warm copy of each partition.
    standby_replicas: int = 1
    # Live streams: at most one update per interval; at most this many per worker.
    stream_interval_ms: int = 1_000
    stream_max_clients: int = 1_000
    # Tests only: a pause after every slice of a background rebuild (runtime/rebuilds.py), so
    # that a small state rebuilds slowly enough for a test to act meanwhile. 0 in production.
    test_only_rebuild_slice_pause_ms: int = 0
    # API keys (a JSON file of hashes, re-read when it changes); empty: no keys asked for.
    api_keys_file: str = ""
    # Authenticates the workers' requests to each other, and their answers; the previous one
    # is still accepted (not used), for a rotation without downtime (SECURITY.md).
    cluster_secret: str = field(default="", repr=False)
    cluster_secret_previous: str = field(default="", repr=False)
    # Static membership: the consumer group's group.instance.id; empty: a dynamic member.
    instance_id: str = ""
    # A member not heard from in this time is out of the group (0: 6 s, or 30 s with an
    # instance id, so that a restarted static member is back before it).
    session_timeout_ms: int = 0

    def __post_init__(self) -> None:
        if self.api_keys_file and not self.cluster_secret:
            raise SettingsError(
                "SEGMENTS_API_KEYS_FILE is set but SEGMENTS_CLUSTER_SECRET is not: the workers' "
                "internal endpoint would serve every program to anyone; set a cluster secret "
                "shared by all workers (e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`)")
        for name, secret in (("SEGMENTS_CLUSTER_SECRET", self.cluster_secret),
                             ("SEGMENTS_CLUSTER_SECRET_PREVIOUS", self.cluster_secret_previous)):
            if secret and len(secret.encode()) < MIN_CLUSTER_SECRET:
                raise SettingsError(f"{name} must be at least {MIN_CLUSTER_SECRET} bytes")
        for name, value in (("SEGMENTS_CLUSTER_SECRET", self.cluster_secret),
                            ("SEGMENTS_CLUSTER_SECRET_PREVIOUS", self.cluster_secret_previous),
                            ("REDIS_URL", self.redis_url or "")):
            if PLACEHOLDER in value:
                raise SettingsError(f"{name} holds the placeholder of .env.example: put a "
                                    "random value in .env")
        if self.cluster_secret_previous and not self.cluster_secret:
            raise SettingsError("SEGMENTS_CLUSTER_SECRET_PREVIOUS needs SEGMENTS_CLUSTER_SECRET")
        if self.api_keys_file and not os.access(self.api_keys_file, os.R_OK):
            raise SettingsError(f"SEGMENTS_API_KEYS_FILE={self.api_keys_file!r} is not a "
                                "readable file (create it with `segments keys add`)")
        if not self.advertised_url:
            if self.web_host in WILDCARD_HOSTS:
                raise SettingsError(
                    f"SEGMENTS_WEB_HOST={self.web_host} listens on every interface, which is "
                    "no address the other workers can reach this one at: set "
                    "SEGMENTS_ADVERTISED_URL (e.g. http://worker-1:6066)")
            host = f"[{self.web_host}]" if ":" in self.web_host else self.web_host
            object.__setattr__(self, "advertised_url", f"http://{host}:{self.web_port}")
        if not self.session_timeout_ms:
            object.__setattr__(self, "session_timeout_ms", STATIC_SESSION_TIMEOUT_MS
                               if self.instance_id else DYNAMIC_SESSION_TIMEOUT_MS)

    @property
    def names(self) -> Names:
        """The names of the product's topics and tables."""
        return Names(self.app_id, self.input_topic, self.dlq_topic, self.changes_topic,
                     self.counts_topic)

    @property
    def kafka_url(self) -> str:
        return ",".join(f"kafka://{h.strip()}" for h in self.bootstrap_servers.split(","))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092",
            kafka_security=KafkaSecurity.from_env(env),
            redis_url=env.get("REDIS_URL") or None,
            app_id=_name(env, "SEGMENTS_APP_ID", "segment-stream", reserve=_LONGEST_SUFFIX),
            partitions=_int(env, "SEGMENTS_PARTITIONS", 8, minimum=1, maximum=10_000),
            input_topic=_name(env, "SEGMENTS_INPUT_TOPIC", "recommendation-weights"),
            dlq_topic=_name(env, "SEGMENTS_DLQ_TOPIC", "recommendation-weights.dlq"),
            changes_topic=_name(env, "SEGMENTS_CHANGES_TOPIC", "segment-count-changes"),
            counts_topic=_name(env, "SEGMENTS_COUNTS_TOPIC", "segment-counts"),
            web_host=(env.get("SEGMENTS_WEB_HOST") or "").strip() or "127.0.0.1",
            web_port=_int(env, "SEGMENTS_WEB_PORT", 6066, minimum=1, maximum=65535),
            cache_ttl_s=_float(env, "SEGMENTS_CACHE_TTL_S", 5.0, maximum=86_400.0),
            watch_thresholds=_thresholds(env.get("SEGMENTS_WATCH_THRESHOLDS") or "0.5"),
            change_interval_ms=_int(env, "SEGMENTS_CHANGE_INTERVAL_MS", 1000, minimum=1),
            replication_factor=_int(env, "SEGMENTS_REPLICATION_FACTOR", 0, minimum=1) or None,
            data_dir=env.get("SEGMENTS_DATA_DIR") or "",
            log_level=_choice(env, "SEGMENTS_LOG_LEVEL", "WARNING",
                              ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
            advertised_url=_url(env, "SEGMENTS_ADVERTISED_URL"),
            max_future_ms=_int(env, "SEGMENTS_MAX_FUTURE_MS", 3_600_000),
            grace_ms=_int(env, "SEGMENTS_GRACE_MS", DEFAULT_GRACE_MS),
            produce_timeout_ms=_int(env, "SEGMENTS_PRODUCE_TIMEOUT_MS", 30_000, minimum=1000),
            peer_timeout_ms=_int(env, "SEGMENTS_PEER_TIMEOUT_MS", 2_000, minimum=50),
            standby_replicas=_int(env, "SEGMENTS_STANDBY_REPLICAS", 1, maximum=16),
            stream_interval_ms=_int(env, "SEGMENTS_STREAM_INTERVAL_MS", 1_000, minimum=50),
            stream_max_clients=_int(env, "SEGMENTS_STREAM_MAX_CLIENTS", 1_000, minimum=0),
            test_only_rebuild_slice_pause_ms=_int(
                env, "SEGMENTS_TEST_ONLY_REBUILD_SLICE_PAUSE_MS", 0, maximum=10_000),
            api_keys_file=(env.get("SEGMENTS_API_KEYS_FILE") or "").strip(),
            cluster_secret=env.get("SEGMENTS_CLUSTER_SECRET") or "",
            cluster_secret_previous=env.get("SEGMENTS_CLUSTER_SECRET_PREVIOUS") or "",
            instance_id=_instance_id(env),
            # Faust refuses a session longer than its broker request timeout (90 s).
            session_timeout_ms=_int(env, "SEGMENTS_SESSION_TIMEOUT_MS", 0, minimum=6_000,
                                    maximum=90_000),
        )

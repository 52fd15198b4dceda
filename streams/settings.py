"""Settings from the environment (contract section 5)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from streams.exceptions import SegmentStreamError


class SettingsError(SegmentStreamError):
    """An environment variable holds a value the product cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
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


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")


def _url(env: Mapping[str, str], name: str) -> str:
    raw = (env.get(name) or "").strip()
    scheme, sep, rest = raw.partition("://")
    if raw and (scheme not in ("http", "https") or not sep or not rest.strip("/")):
        raise SettingsError(f"{name}={raw!r} is not an http:// or https:// URL")
    return raw.rstrip("/")


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str | None = None
    app_id: str = "segment-stream"
    partitions: int = 8
    input_topic: str = "recommendation-weights"
    dlq_topic: str = "recommendation-weights.dlq"
    changes_topic: str = "segment-count-changes"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    cache_ttl_s: float = 5.0
    watch_thresholds: tuple[float, ...] = (0.5,)
    change_interval_ms: int = 1000
    replication_factor: int = 1
    data_dir: str = field(default="")
    log_level: str = "WARNING"
    # The URL the other workers use to reach this one's HTTP endpoint (SEGMENTS_ADVERTISED_URL);
    # set it when binding 0.0.0.0 (e.g. in a container). Empty: http://{web_host}:{web_port}.
    advertised_url: str = ""
    # Hand whole fetched batches to the aggregation (streams/consumer.py) instead of Faust's
    # per-record agent path (SEGMENTS_BATCH_CONSUME; false only to compare the two).
    batch_consume: bool = True

    def __post_init__(self) -> None:
        if not self.advertised_url:
            object.__setattr__(self, "advertised_url", f"http://{self.web_host}:{self.web_port}")

    @property
    def repartition_topic(self) -> str:
        return f"{self.app_id}-recommendations-by-segment"

    @property
    def changelog_topics(self) -> tuple[str, ...]:
        """The compacted changelog topics of the two durable tables (Faust's naming)."""
        return tuple(f"{self.app_id}-{table}-changelog"
                     for table in ("recommendations", "emitted-counts"))

    @property
    def kafka_url(self) -> str:
        return ",".join(f"kafka://{h.strip()}" for h in self.bootstrap_servers.split(","))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092",
            redis_url=env.get("REDIS_URL") or None,
            app_id=env.get("SEGMENTS_APP_ID") or "segment-stream",
            partitions=_int(env, "SEGMENTS_PARTITIONS", 8, minimum=1),
            input_topic=env.get("SEGMENTS_INPUT_TOPIC") or "recommendation-weights",
            dlq_topic=env.get("SEGMENTS_DLQ_TOPIC") or "recommendation-weights.dlq",
            changes_topic=env.get("SEGMENTS_CHANGES_TOPIC") or "segment-count-changes",
            web_host=env.get("SEGMENTS_WEB_HOST") or "127.0.0.1",
            web_port=_int(env, "SEGMENTS_WEB_PORT", 6066, minimum=1),
            cache_ttl_s=_float(env, "SEGMENTS_CACHE_TTL_S", 5.0),
            watch_thresholds=_thresholds(env.get("SEGMENTS_WATCH_THRESHOLDS") or "0.5"),
            change_interval_ms=_int(env, "SEGMENTS_CHANGE_INTERVAL_MS", 1000, minimum=1),
            replication_factor=_int(env, "SEGMENTS_REPLICATION_FACTOR", 1, minimum=1),
            data_dir=env.get("SEGMENTS_DATA_DIR") or "",
            log_level=(env.get("SEGMENTS_LOG_LEVEL") or "WARNING").upper(),
            advertised_url=_url(env, "SEGMENTS_ADVERTISED_URL"),
            batch_consume=_bool(env, "SEGMENTS_BATCH_CONSUME", True),
        )

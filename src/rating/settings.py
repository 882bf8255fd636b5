"""Worker settings: the only place the worker reads environment variables (prefix ``RATING_``).

Three other modules read a few, none of them in the worker: ``billing_sim``
(``RATING_BILLING_FAILURE_RATE``, ``RATING_BILLING_LATENCY_SECONDS``: defaults of its flags),
``demo.processes`` (``RATING_KAFKA_BOOTSTRAP``: run the demo on that cluster instead of the
embedded broker) and ``testing`` (``RATING_RATE_CARDS``: the rate cards when the checkout's
sample is not there; and the environment of the processes it starts, copied without its
``RATING_*`` variables). The worker's own ``RATING_*`` variables are read here only.

Frozen, validated at start-up: a bad value stops the worker with a message naming the
variable and the problem instead of failing later on the first CDR.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rating.errors import RatingBaseError

MIN_TOKEN_LENGTH = 16
_HOST_PORT = r"^[^\s,:]+:\d{1,5}(,[^\s,:]+:\d{1,5})*$"


class Topics(BaseSettings):
    """Contract topic names (defaults from CONTRACTS.md, all configurable)."""

    model_config = SettingsConfigDict(env_prefix="RATING_TOPIC_", frozen=True, extra="ignore")

    cdr_audio: str = "cdr.audio-conferencing"
    cdr_tollfree: str = "cdr.toll-free"
    tenant_settings: str = "rating.tenant-settings"
    funds: str = "billing.funds"
    charges: str = "rating.charges"
    recharge_commands: str = "billing.recharge-commands"
    balance_events: str = "rating.balance-events"
    rejected: str = "rating.rejected"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RATING_", frozen=True, extra="ignore")

    topics: Topics = Field(default_factory=Topics)
    kafka_bootstrap: Annotated[str, Field(pattern=_HOST_PORT)] = "127.0.0.1:9092"
    rate_cards: Path = Path("ratecards/sample.json")
    # How often the rate-card file is checked for changes (0 = never reload).
    rate_cards_poll_seconds: Annotated[float, Field(ge=0)] = 5.0

    app_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")] = "rating"
    # Partitions of the internal ledger topic and the changelogs: the unit of parallelism.
    partitions: Annotated[int, Field(ge=1, le=1024)] = 8
    replication: Annotated[int, Field(ge=1, le=7)] = 1
    data_dir: Path = Path("data")
    # rocksdict:// keeps the accounts table in RocksDB under data_dir (one database per
    # partition; a restart replays only the changelog tail). memory:// replays it all.
    store: Literal["rocksdict://", "memory://"] = "rocksdict://"
    # RocksDB memory (README "State"). Worker-wide, shared by all its partition databases:
    # the memtables' total and the LRU block cache (which holds index and filter blocks
    # too). Per memtable: its size and how many a column family may have.
    rocksdb_memtable_bytes: Annotated[int, Field(ge=1024 * 1024)] = 32 * 1024 * 1024
    rocksdb_block_cache_bytes: Annotated[int, Field(ge=1024 * 1024)] = 32 * 1024 * 1024
    rocksdb_write_buffer_bytes: Annotated[int, Field(ge=64 * 1024)] = 4 * 1024 * 1024
    rocksdb_max_write_buffers: Annotated[int, Field(ge=1, le=16)] = 2
    # RocksDB: recovery and standbys write fetched changelog records to the database in bulk
    # (README "State"); false leaves every record to Faust's per-event recovery.
    bulk_recovery: bool = True
    # Workers that keep a warm copy of each partition's table (Faust standbys), so a
    # failover replays only what the standby has not read yet. 0 (none) by default: a
    # standby's copy was seen missing a record after a failover (README, State, Standbys).
    standby_replicas: Annotated[int, Field(ge=0, le=3)] = 0

    web_host: str = "0.0.0.0"
    web_port: Annotated[int, Field(ge=1, le=65535)] = 6066
    # Where other workers can reach this one (for routing GET /tenants/{id}).
    web_advertised_host: str = "127.0.0.1"
    admin_token: SecretStr | None = None
    log_level: str = "INFO"

    # Exactly-once: a cdr_id is remembered this long after its call_start; CDRs older than
    # this are rejected as `stale` instead of being charged without a dedup guarantee.
    dedup_horizon_hours: Annotated[int, Field(ge=1, le=24 * 400)] = 35 * 24
    # Write one seal record per changelog partition after each batch, for brokers that
    # report a stale end offset (the embedded Tansu does); see streaming/store.py.
    changelog_seal: bool = True
    # How long a fetch may wait for data; bounds the latency of each of the two hops on
    # brokers that do not answer long polls early (the embedded Tansu).
    fetch_max_wait_ms: Annotated[int, Field(ge=1, le=30000)] = 100
    # read_committed: records of aborted publisher transactions are never delivered (so
    # never charged). Brokers without transactions (the embedded Tansu) behave the same
    # either way: every record is committed.
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    # Fewer garbage collections (rating/gc_tuning.py): ~10% of a worker's CPU with Python's
    # defaults. false keeps them.
    gc_tuning: bool = True
    # The codec of everything the worker produces (charges, ledger, changelog, ...).
    # lz4: the cheapest CPU per byte of the codecs Kafka defines, readable by every client.
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    # How long the Kafka client waits to fill a batch before it sends. Faust's default, 0,
    # sends a produce request for nearly every record (a socket write each): the worker's
    # largest single cost. A few ms per hop buy batches of hundreds of records.
    producer_linger_ms: Annotated[int, Field(ge=0, le=1000)] = 5
    # Ingest batches: up to this many input records or batch_seconds, then one send.
    batch_max: Annotated[int, Field(ge=1, le=10000)] = 500
    # Ledger batches: up to this many ledger records (each up to 256 messages: 8,192 CDRs at
    # most, ~2,000 under backlog) or batch_seconds, then one changelog flush and publish.
    ledger_batch_records: Annotated[int, Field(ge=1, le=10000)] = 32
    # A batch waits at most this long for more records: at saturation batches fill to
    # batch_max long before; below it, every hop's wait is latency (0.05 s: p50 ~230 ms,
    # 0.01 s: ~160 ms at 400 CDRs/s; throughput the same within noise).
    batch_seconds: Annotated[float, Field(gt=0, le=5)] = 0.01
    # Clock messages drive recharge retries/timeouts and dedup expiry.
    tick_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0

    # A CDR or funds event whose tenant has no settings yet is held this long for them to
    # arrive (settings and funds come on different topics), then rejected unknown_tenant.
    unknown_tenant_hold_seconds: Annotated[int, Field(ge=0, le=7 * 24 * 3600)] = 900
    # Bounds of what is held: per tenant, and per ledger partition; past them, reject now.
    unknown_tenant_hold_max_per_tenant: Annotated[int, Field(ge=0)] = 1000
    unknown_tenant_hold_max_per_partition: Annotated[int, Field(ge=0)] = 100_000

    recharge_timeout_seconds: Annotated[float, Field(gt=0)] = 600.0
    recharge_backoff_seconds: Annotated[float, Field(gt=0)] = 30.0
    recharge_backoff_max_seconds: Annotated[float, Field(gt=0)] = 3600.0
    recharge_max_failures: Annotated[int, Field(ge=1)] = 5
    recharge_daily_cap: Annotated[int, Field(ge=1)] = 10

    # Consumer-group timing. Short defaults keep rebalances quick after a worker dies.
    session_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    rebalance_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    heartbeat_seconds: Annotated[float, Field(gt=0)] = 1.0
    commit_interval_seconds: Annotated[float, Field(gt=0)] = 1.0

    @field_validator("admin_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty or short token would turn "admin endpoints on" into "anyone is admin".
        if value is not None and len(value.get_secret_value().strip()) < MIN_TOKEN_LENGTH:
            raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters (or unset)")
        return value

    @field_validator("compression", "isolation_level", "store", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    def rocksdb_options(self) -> dict[str, int]:
        """Faust's per-database RocksDB options (``faust.stores.rocksdb.RocksDBOptions``)
        from ours; the worker-wide budget is ``rating.streaming.rocks.MemoryBudget``."""
        return {
            "write_buffer_size": self.rocksdb_write_buffer_bytes,
            "max_write_buffer_number": self.rocksdb_max_write_buffers,
        }

    def check_rate_cards_readable(self) -> None:
        """Fail early with the file named: the worker is useless without its rate cards."""
        path = self.rate_cards
        if not path.exists():
            raise SettingsError(f"RATING_RATE_CARDS: file {str(path)!r} does not exist")
        if not path.is_file():
            raise SettingsError(f"RATING_RATE_CARDS: {str(path)!r} is not a regular file")
        if not os.access(path, os.R_OK):
            raise SettingsError(f"RATING_RATE_CARDS: file {str(path)!r} is not readable")


class SettingsError(RatingBaseError, ValueError):
    """Bad configuration, phrased for the operator."""


def load_settings() -> Settings:
    """Read settings from the environment; errors name the RATING_* variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(part) for part in err["loc"])
            problems.append(f"RATING_{field.upper()}: {err['msg']}")
        raise SettingsError("bad configuration: " + "; ".join(problems)) from exc

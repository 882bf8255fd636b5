"""Prometheus collectors: the one place metric names live.

Labels are low-cardinality by design (topic, product, reason, currency, kind, partition);
never a tenant or a CDR id. Money counters are floats because Prometheus stores float64:
they are for watching, never for computing a balance.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Latency buckets from 1 ms to 2 min: consume->charge is milliseconds, call end->charge
# can be minutes when the platform batches CDRs.
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)
_EVENT_LAG_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400)


class Metrics:
    """All collectors of one worker, on their own registry (tests build several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.worker_info = Info("rating_worker", "Worker build and identity.", registry=r)
        self.cdrs_consumed = Counter(
            "rating_cdrs_consumed_total",
            "CDR messages read from the input topics.",
            ["topic"],
            registry=r,
        )
        self.cdrs_charged = Counter(
            "rating_cdrs_charged_total",
            "CDRs rated and debited (once each).",
            ["product", "currency"],
            registry=r,
        )
        self.cdrs_rejected = Counter(
            "rating_cdrs_rejected_total",
            "Input messages sent to the rejected topic.",
            ["topic", "reason"],
            registry=r,
        )
        self.cdrs_duplicate = Counter(
            "rating_cdrs_duplicate_total",
            "CDRs dropped because their cdr_id was already charged.",
            ["product"],
            registry=r,
        )
        self.charges_replayed = Counter(
            "rating_charges_republished_total",
            "Charges published again while replaying after a crash (same content).",
            registry=r,
        )
        self.charged_amount = Counter(
            "rating_charged_amount_total",
            "Sum of charge amounts, in currency units.",
            ["currency", "product"],
            registry=r,
        )
        self.funds_credited = Counter(
            "rating_funds_credited_total",
            "Sum of funds applied to balances, in currency units.",
            ["currency", "kind"],
            registry=r,
        )
        self.funds_debited = Counter(
            "rating_funds_debited_total",
            "Sum of negative adjustments applied to balances, in currency units (positive).",
            ["currency", "kind"],
            registry=r,
        )
        self.internal_errors = Counter(
            "rating_internal_errors_total",
            "Messages parked in the rejected topic because processing raised an error.",
            ["stage"],
            registry=r,
        )
        self.funds_events = Counter(
            "rating_funds_events_total",
            "Funds events applied or dropped as duplicates.",
            ["kind", "outcome"],
            registry=r,
        )
        self.settings_applied = Counter(
            "rating_tenant_settings_applied_total",
            "Tenant settings messages applied.",
            registry=r,
        )
        self.recharge_commands = Counter(
            "rating_recharge_commands_total",
            "Recharge command lifecycle: issued, retried, succeeded, failed, given_up.",
            ["outcome"],
            registry=r,
        )
        self.recharge_outstanding = Gauge(
            "rating_recharge_outstanding",
            "Recharge commands awaiting billing's answer.",
            registry=r,
        )
        self.recharge_amount_mismatch = Counter(
            "rating_recharge_amount_mismatch_total",
            "recharge_succeeded events that credited another amount than their command's.",
            ["currency"],
            registry=r,
        )
        self.messages_held = Counter(
            "rating_messages_held_total",
            "CDRs and funds events held because their tenant had no settings yet.",
            ["topic"],
            registry=r,
        )
        self.messages_held_now = Gauge(
            "rating_held_messages",
            "Messages held now for tenants without settings (partitions owned here).",
            registry=r,
        )
        self.balance_events = Counter(
            "rating_balance_events_total",
            "Balance events emitted, by kind.",
            ["kind"],
            registry=r,
        )
        self.tenants = Gauge(
            "rating_tenants", "Tenants whose partitions this worker owns.", registry=r
        )
        self.tenants_below_trigger = Gauge(
            "rating_tenants_below_trigger",
            "Owned tenants with auto-recharge whose balance is below the trigger.",
            registry=r,
        )
        self.tenants_exhausted = Gauge(
            "rating_tenants_exhausted",
            "Owned tenants whose balance is <= 0.",
            registry=r,
        )
        self.processing_latency = Histogram(
            "rating_processing_latency_seconds",
            "From consuming a CDR to its charge being handed to the producer.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.event_lag = Histogram(
            "rating_event_lag_seconds",
            "From the call's end to its charge being emitted.",
            buckets=_EVENT_LAG_BUCKETS,
            registry=r,
        )
        self.ledger_batch_size = Histogram(
            "rating_ledger_batch_size",
            "Ledger records applied per batch (one changelog flush).",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=r,
        )
        self.ledger_fenced = Counter(
            "rating_ledger_fenced_total",
            "Ledger batches dropped on a partition because a newer owner had written its "
            "changelog: this worker had been deposed (outputs withheld, records left unacked).",
            ["partition"],
            registry=r,
        )
        self.ledger_gaps = Counter(
            "rating_ledger_gaps_total",
            "Ledger records that arrived before earlier records of their partition were "
            "applied (dropped on the way): not applied, the partition read again from the "
            "first missing one.",
            ["partition"],
            registry=r,
        )
        self.changelog_repaired_keys = Counter(
            "rating_changelog_repaired_keys_total",
            "State keys written again because a deposed owner's changelog records were found "
            "after the live owner's (so compaction keeps the live owner's value).",
            registry=r,
        )
        self.ledger_flush_seconds = Histogram(
            "rating_ledger_flush_seconds",
            "Waiting for the broker to ack a batch's changelog records (and seals).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "rating_consumer_lag_messages",
            "Messages behind the partition's high watermark, per owned input partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.partitions_owned = Gauge(
            "rating_partitions_owned",
            "Partitions currently assigned to this worker.",
            ["topic"],
            registry=r,
        )
        self.undecodable_batches = Counter(
            "rating_undecodable_batches_total",
            "Fetched record batches that could not be decoded (corrupt, unknown codec).",
            ["topic", "partition"],
            registry=r,
        )
        self.rocksdb_memory = Gauge(
            "rating_rocksdb_memory_bytes",
            "RocksDB memory in use, worker-wide: memtables, block_cache (RocksDB store only).",
            ["kind"],
            registry=r,
        )
        self.partitions_stopped = Gauge(
            "rating_partitions_stopped",
            "Partitions this worker stopped consuming at an undecodable internal batch.",
            registry=r,
        )
        self.ratecard_reloads = Counter(
            "rating_ratecard_reloads_total",
            "Rate-card (re)loads by outcome.",
            ["outcome"],
            registry=r,
        )
        self.ratecard_active = Gauge(
            "rating_ratecard_active_info",
            "1 for each rate card in the loaded set (label: card id, plan, currency).",
            ["rate_card_id", "plan", "currency"],
            registry=r,
        )
        self.ratecard_loaded_at = Gauge(
            "rating_ratecard_loaded_timestamp_seconds",
            "When the active rate-card set was loaded (unix time).",
            registry=r,
        )

#!/usr/bin/env bash
# Creates the rating topics. Idempotent: existing topics are left as they are, so it is safe
# to run on every deploy. Runs in the apache/kafka image (kafka-topics.sh).
#
# Used by docker-compose's `topics` service and, verbatim, by the Kubernetes Job in
# deploy/k8s/topics-job.yaml (tests/unit/test_deploy.py keeps the two copies equal).
#
# Every topic gets the same partition count: the CDR, settings and funds topics are keyed by
# tenant, and equal counts keep them co-partitioned with the accounts table. PARTITIONS must
# equal the workers' RATING_PARTITIONS, and must not be raised once data is flowing (that
# moves tenants to other partitions, away from their balance).
set -euo pipefail

BOOTSTRAP="${KAFKA_BOOTSTRAP:?set KAFKA_BOOTSTRAP (host:port[,host:port])}"
APP_ID="${RATING_APP_ID:-rating}"
PARTITIONS="${PARTITIONS:-12}"
REPLICATION="${REPLICATION:-3}"
# With 3 replicas, acks=all survives one broker down; a single broker needs 1.
MIN_ISR="${MIN_ISR:-$((REPLICATION > 1 ? 2 : 1))}"
WAIT_SECONDS="${WAIT_SECONDS:-180}"
KAFKA_TOPICS="${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}"

DAY_MS=$((24 * 3600 * 1000))
# CDRs: as long as the workers remember cdr_ids (RATING_DEDUP_HORIZON_HOURS, 35 days), so a
# replay from the earliest offset is still deduplicated.
CDR_RETENTION_MS=$((35 * DAY_MS))
# Outputs others consume: room for a consumer that was down over a long weekend.
OUTPUT_RETENTION_MS=$((7 * DAY_MS))
# Charges and rejections are what operators replay or reconcile from: at least the horizon.
AUDIT_RETENTION_MS=$((35 * DAY_MS))

deadline=$((SECONDS + WAIT_SECONDS))
until "$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" --list >/dev/null 2>&1; do
  if ((SECONDS >= deadline)); then
    echo "Kafka at $BOOTSTRAP not reachable after ${WAIT_SECONDS}s" >&2
    exit 1
  fi
  echo "waiting for Kafka at $BOOTSTRAP ..."
  sleep 2
done

# create NAME CONFIG...: create the topic if it does not exist yet.
create() {
  local name="$1"
  shift
  local args=()
  for config in "min.insync.replicas=$MIN_ISR" "$@"; do
    args+=(--config "$config")
  done
  "$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$name" --partitions "$PARTITIONS" --replication-factor "$REPLICATION" "${args[@]}"
  echo "topic $name: ok"
}

# Inputs from the platform and billing.
create cdr.audio-conferencing cleanup.policy=delete "retention.ms=$CDR_RETENTION_MS"
create cdr.toll-free cleanup.policy=delete "retention.ms=$CDR_RETENTION_MS"
create billing.funds cleanup.policy=delete "retention.ms=$CDR_RETENTION_MS"
# Latest settings per tenant forever: compacted, never deleted by age.
create rating.tenant-settings cleanup.policy=compact

# Outputs.
create rating.charges cleanup.policy=delete "retention.ms=$AUDIT_RETENTION_MS"
create rating.rejected cleanup.policy=delete "retention.ms=$AUDIT_RETENTION_MS"
create billing.recharge-commands cleanup.policy=delete "retention.ms=$OUTPUT_RETENTION_MS"
create rating.balance-events cleanup.policy=delete "retention.ms=$OUTPUT_RETENTION_MS"

# Internal topics (the workers would create them too; created here so partitions and
# replication are chosen on purpose). The ledger is a repartition topic consumed at once;
# the changelog is the accounts table's durable state: compacted, never deleted by age.
create "$APP_ID-ledger" cleanup.policy=delete "retention.ms=$CDR_RETENTION_MS"
create "$APP_ID-accounts-changelog" cleanup.policy=compact

echo "all topics present"

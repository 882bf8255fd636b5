"""The worker's Faust adapter: app, agents, table store, transport and HTTP views.

Not the only package that imports faust or aiokafka. The pure core (``domain/``, ``ledger``,
``ingest``, ``usage``, ``keys``, ``error_policy``) imports neither. Outside this package:

- faust: ``worker`` (``faust.worker.Worker`` runs the app) and ``web.page`` (the admin page's
  views, on ``faust.web``);
- aiokafka: the programs that are Kafka clients of the public topics like any other
  (``demo``, ``billing_sim``, ``platform_sim``, ``replay``, ``admin``, ``reconcile_cli``),
  ``kafka_local`` (its admin client waits for the local Kafka), ``worker`` (``KafkaError``:
  an unreachable broker at start-up), ``testing`` (clients for tests and benchmarks) and
  ``partitioning`` (aiokafka's murmur2, so the ledger partition of a tenant is computed
  exactly as the producer computes it).
"""

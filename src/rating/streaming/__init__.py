"""The worker's Faust adapter: app, agents, table store, transport and HTTP views.

The pure core (``domain/``, ``ledger``, ``ingest``, ``usage``, ``keys``) imports neither faust
nor aiokafka. Outside this package, only the programs that are Kafka clients of the public
topics like any other (demo, simulators, ``rating rejected replay``, the admin CLI), the admin
page's views (``rating.web``, on faust.web) and ``partitioning`` (aiokafka's murmur2, so the
ledger partition of a tenant is computed exactly as the producer computes it) import them.
"""

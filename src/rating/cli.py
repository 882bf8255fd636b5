"""The `rating` command: broker, kafka, worker, rate, schemas, demo and the admin/billing tools."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


def _broker(args: argparse.Namespace) -> int:
    from rating.broker import run_foreground

    return run_foreground(args.host, args.port)


def _kafka(args: argparse.Namespace) -> int:
    from rating.kafka_local import run_foreground

    return run_foreground(args.host, args.port)


def _worker(args: argparse.Namespace) -> int:
    from rating.worker import run_worker

    return run_worker()


def _rate(args: argparse.Namespace) -> int:
    from rating import offline

    return offline.run(args, sys.stdin, sys.stdout, sys.stderr)


def _schemas(args: argparse.Namespace) -> int:
    from rating.schemas import drift, write_all

    directory = Path(args.dir)
    if args.write:
        for path in write_all(directory):
            print(path)
        return 0
    stale = drift(directory)
    if stale:
        print(
            "schemas differ from the models (run `rating schemas --write`): " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    print(f"schemas in {directory} match the models")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rating.demo import run_demo

    return run_demo(cdrs=args.cdrs, keep_running=args.keep_running)


def _tenants_set(args: argparse.Namespace) -> int:
    from rating.admin import set_tenant

    return set_tenant(args)


def _tenants_show(args: argparse.Namespace) -> int:
    from rating.admin import show_tenant

    return show_tenant(args)


def _funds_add(args: argparse.Namespace) -> int:
    from rating.admin import add_funds

    return add_funds(args)


def _billing_sim(args: argparse.Namespace) -> int:
    from rating.billing_sim import run_billing_sim

    return run_billing_sim(args)


def _platform_sim(args: argparse.Namespace) -> int:
    from rating.platform_sim import run_platform_sim

    return run_platform_sim(args)


def _replay(args: argparse.Namespace) -> int:
    from rating.replay import run_replay

    return run_replay(args)


def _reconcile(args: argparse.Namespace) -> int:
    from rating.reconcile_cli import run_reconcile

    return run_reconcile(args)


def build_parser() -> argparse.ArgumentParser:
    from rating import offline

    parser = argparse.ArgumentParser(prog="rating", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker in the foreground")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(handler=_broker)

    p = sub.add_parser(
        "kafka", help="run Apache Kafka (from Maven Central, needs Java 17) in the foreground"
    )
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(handler=_kafka)

    p = sub.add_parser("worker", help="run one pipeline worker (settings from RATING_* env)")
    p.set_defaults(handler=_worker)

    p = sub.add_parser("rate", help="rate CDR JSON lines offline (what-if, re-rating)")
    offline.add_arguments(p)
    p.set_defaults(handler=_rate)

    p = sub.add_parser("schemas", help="check or write the JSON Schemas in schemas/")
    p.add_argument("--write", action="store_true", help="regenerate the files")
    p.add_argument("--dir", default="schemas")
    p.set_defaults(handler=_schemas)

    p = sub.add_parser("demo", help="broker + worker + simulated platform and billing")
    p.add_argument("--cdrs", type=int, default=60, help="CDRs the simulated platform sends")
    p.add_argument(
        "--keep-running", action="store_true", help="leave everything running until Ctrl-C"
    )
    p.set_defaults(handler=_demo)

    from rating.admin import add_admin_parsers

    add_admin_parsers(sub, _tenants_set, _tenants_show, _funds_add)

    from rating.billing_sim import add_arguments as billing_args

    p = sub.add_parser("billing-sim", help="answer recharge commands like billing would")
    billing_args(p)
    p.set_defaults(handler=_billing_sim)

    from rating.platform_sim import add_arguments as platform_args

    p = sub.add_parser("platform-sim", help="publish simulated CDRs like the telephony platform")
    platform_args(p)
    p.set_defaults(handler=_platform_sim)

    from rating.replay import add_arguments as replay_args

    rejected = sub.add_parser("rejected", help="operate on rating.rejected").add_subparsers(
        dest="rejected_command", required=True, metavar="ACTION"
    )
    p = rejected.add_parser("replay", help="re-publish rejected messages to their source topic")
    replay_args(p)
    p.set_defaults(handler=_replay)

    from rating.reconcile_cli import add_arguments as reconcile_args

    p = sub.add_parser(
        "reconcile",
        help="recompute every balance from the topics and compare with the workers' "
        "(exit 1 on drift)",
    )
    reconcile_args(p)
    p.set_defaults(handler=_reconcile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130

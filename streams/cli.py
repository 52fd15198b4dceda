"""The `segments` command (contract section 5)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from streams.exceptions import SegmentStreamError
from streams.tools import kafka_local


def _kafka(args: argparse.Namespace) -> int:
    data = Path(args.data) if args.data else None
    if args.kafka_cmd == "fetch":
        path = kafka_local.resolve_jars(quiet=not args.verbose)
        print(f"Apache Kafka {kafka_local.KAFKA_VERSION} jars in {path}")
        return 0
    if args.kafka_cmd == "start" and args.brokers > 1:
        if args.sasl is not None or args.tls:
            raise SegmentStreamError("--brokers takes no --sasl or --tls (yet)")
        cluster, started = kafka_local.start_cluster(args.brokers, port=args.port,
                                                     data_dir=data, timeout_s=args.timeout)
        pids = ", ".join(str(n.pid) for n in cluster.nodes)
        print(f"Kafka {cluster.version}: {len(cluster.nodes)} brokers "
              f"{'started' if started else 'already running'} (pids {pids}); "
              f"bootstrap: {cluster.bootstrap}")
        return 0
    if args.kafka_cmd == "start":
        import shlex

        sasl = kafka_local.parse_credentials(args.sasl) if args.sasl is not None else None
        if args.tls and sasl is None:
            raise SegmentStreamError("--tls needs --sasl USER:PASSWORD")
        state, started = kafka_local.start(port=args.port, data_dir=data, timeout_s=args.timeout,
                                           sasl=sasl, tls=args.tls)
        if started:
            print(f"Kafka {state.version} started (pid {state.pid}); bootstrap: {state.bootstrap}")
        else:
            print(f"Kafka is already running (pid {state.pid}); bootstrap: {state.bootstrap}")
        if sasl is not None:
            # The password is printed only because the user just gave it on the command line.
            print(f"{state.security_protocol} with {state.sasl_mechanism}; a client needs:")
            for name, value in state.client_env().items():
                print(f"export {name}={shlex.quote(value)}")
        return 0
    if args.kafka_cmd == "status":
        nodes = kafka_local.running_cluster((data or kafka_local.default_data_dir()).resolve())
        if nodes is not None:
            print(f"Kafka is running ({len(nodes.nodes)} brokers); bootstrap: "
                  f"{nodes.bootstrap}")
            return 0
        running = kafka_local.running_broker((data or kafka_local.default_data_dir()).resolve())
        if running is None:
            print("Kafka is not running")
            return 1
        print(f"Kafka is running (pid {running.pid}); bootstrap: {running.bootstrap}")
        return 0
    was = kafka_local.stop_cluster(data_dir=data)
    stopped = kafka_local.stop(data_dir=data)
    if was is not None:
        print(f"Kafka stopped ({len(was.nodes)} brokers)")
    else:
        print("Kafka stopped" if stopped else "Kafka was not running")
    return 0


def _produce(args: argparse.Namespace) -> int:
    from streams.runtime.kafka_clients import client_options
    from streams.settings import Settings
    from streams.tools.produce import base_ts_ending_now, generate, produce

    settings = Settings.from_env()
    base_ts = args.base_ts if args.base_ts is not None else base_ts_ending_now(args.events)
    records = generate(args.events, seed=args.seed, programs=args.programs, users=args.users,
                       labels=args.labels, assets=args.assets, invalid_ratio=args.invalid_ratio,
                       late_ratio=args.late_ratio, base_ts=base_ts)
    n = asyncio.run(produce(args.bootstrap or settings.bootstrap_servers,
                            args.topic or settings.input_topic, records, total=args.events,
                            rate=args.rate, progress=sys.stderr.isatty(),
                            kafka=client_options(settings.kafka_security)))
    print(f"produced {n} events to {args.topic or settings.input_topic}")
    return 0


def _watch(args: argparse.Namespace) -> int:
    from streams.runtime.kafka_clients import client_options
    from streams.settings import Settings
    from streams.tools.counts_table import CountsTable
    from streams.tools.watch import watch

    settings = Settings.from_env()
    threshold = args.threshold if args.threshold is not None else settings.watch_thresholds[0]
    if not 0.0 <= threshold <= 1.0:
        raise SegmentStreamError(f"--threshold {threshold} is outside [0, 1]")
    if args.size < 1:
        raise SegmentStreamError("--size must be at least 1")
    if threshold not in settings.watch_thresholds:
        print(f"segments watch: {threshold:g} is not in SEGMENTS_WATCH_THRESHOLDS "
              f"({','.join(f'{t:g}' for t in settings.watch_thresholds)}): segment-counts "
              "holds only the watched thresholds", file=sys.stderr)
    topic = args.topic or settings.counts_topic
    table = CountsTable(args.program, threshold, args.segment_type,
                        args.segment_basis.removesuffix("s"))
    asyncio.run(watch(args.bootstrap or settings.bootstrap_servers, topic, table, args.size,
                      once=args.once, kafka=client_options(settings.kafka_security)))
    return 0


def _keys(args: argparse.Namespace) -> int:
    from api.keys import add_key, revoke_key

    path = args.file or os.environ.get("SEGMENTS_API_KEYS_FILE")
    if not path:
        raise SegmentStreamError("no keys file: pass --file or set SEGMENTS_API_KEYS_FILE")
    if args.keys_cmd == "add":
        programs = [p.strip() for p in args.programs.split(",") if p.strip()]
        key = add_key(path, args.name, programs)
        print(f"added key {args.name!r} for {', '.join(sorted(set(programs)))} to {path}; "
              "it is shown only now:", file=sys.stderr)
        print(key)
        return 0
    if not revoke_key(path, args.name):
        raise SegmentStreamError(f"no key named {args.name!r} in {path}")
    print(f"revoked key {args.name!r} in {path}", file=sys.stderr)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from streams.runtime.worker import run_worker

    run_worker()
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from streams.settings import Settings
    from streams.tools.exceptions import MigrationRefused
    from streams.tools.migrate import run_migration

    try:
        report = asyncio.run(run_migration(Settings.from_env(), args.to_app_id, args.partitions))
    except MigrationRefused as exc:
        print(f"segments migrate: {exc}", file=sys.stderr)
        return exc.exit_code
    print(report.summary())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from streams.tools.demo import run_demo

    code: int = run_demo(port=args.port, web_port=args.web_port, events=args.events,
                         keep_serving=not args.no_serve)
    return code


def _bench(args: argparse.Namespace) -> int:
    from streams.tools.bench import BenchConfig, run_bench

    cfg = BenchConfig(out_dir=Path(args.out), doc=Path(args.doc))
    if args.quick:
        cfg.events, cfg.api_recommendations, cfg.api_segments = 3_000, 20_000, 200
        cfg.api_requests, cfg.probes, cfg.stream_clients = 160, 10, 20
        cfg.long_tail_recommendations = 20_000
        cfg.pushdown_segments, cfg.pushdown_workers, cfg.pushdown_requests = 1_000, 2, 10
    cfg.pushdown_only = args.pushdown_only
    cfg.long_tail_only = args.long_tail_only
    cfg.freshness_only = args.freshness_only
    for name in ("events", "api_recommendations", "api_segments", "clients", "api_requests",
                 "probes", "stream_clients", "long_tail_recommendations", "pushdown_segments",
                 "pushdown_workers", "pushdown_rate", "freshness_runs"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    return run_bench(cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segments", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="cmd", required=True)

    sub.add_parser("worker", help="run one worker (Faust agents + GET /segments)").set_defaults(
        func=_worker)

    kafka = sub.add_parser("kafka", help="a local Apache Kafka (KRaft) on 127.0.0.1: one node, "
                                          "or --brokers N")
    kafka_sub = kafka.add_subparsers(dest="kafka_cmd", required=True)
    for name, text in (("start", "start the broker (idempotent)"),
                       ("stop", "stop the broker of --data"),
                       ("status", "is the broker of --data running?"),
                       ("fetch", "resolve and cache the broker's jars only")):
        p = kafka_sub.add_parser(name, help=text)
        p.add_argument("--data", help="data folder (default: under the user's data directory)")
        if name == "start":
            p.add_argument("--port", type=int, default=9092,
                           help="client port (with --brokers: of the first node; the others "
                                "take the next ones, or free ones)")
            p.add_argument("--brokers", type=int, default=1,
                           help="nodes (each broker and controller) of a local cluster")
            p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait")
            p.add_argument("--sasl", metavar="USER:PASSWORD",
                           help="clients must authenticate as USER with SCRAM-SHA-512 "
                                "(SASL_PLAINTEXT); the user is set when --data is first used")
            p.add_argument("--tls", action="store_true",
                           help="with --sasl: SASL_SSL, self-signed CA written to DATA/ca.pem")
    kafka.set_defaults(func=_kafka)

    prod = sub.add_parser("produce", help="produce deterministic synthetic events")
    prod.add_argument("--events", type=int, default=10_000)
    prod.add_argument("--programs", type=int, default=3)
    prod.add_argument("--users", type=int, default=2_000)
    prod.add_argument("--labels", type=int, default=200)
    prod.add_argument("--assets", type=int, default=500)
    prod.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = as fast as possible")
    prod.add_argument("--seed", type=int, default=1)
    prod.add_argument("--invalid-ratio", type=float, default=0.0,
                      help="share of invalid records (they go to the DLQ)")
    prod.add_argument("--late-ratio", type=float, default=0.02,
                      help="share of events followed, 1-200 records later, by an older event "
                           "of the same recommendation (half of them after a withdrawal of a "
                           "recommendation never seen); contract §2 ignores the older one")
    prod.add_argument("--base-ts", type=int, default=None,
                      help="epoch ms of the first event (events are 10 ms apart; default: so "
                           "that the last one is now); output is deterministic for a given "
                           "--seed and --base-ts")
    prod.add_argument("--topic", default=None, help="default: SEGMENTS_INPUT_TOPIC")
    prod.add_argument("--bootstrap", default=None, help="default: KAFKA_BOOTSTRAP_SERVERS")
    prod.set_defaults(func=_produce)

    watch = sub.add_parser("watch", help="follow segment-counts (from the beginning, then live) "
                                         "in a live table of a program's top segments")
    watch.add_argument("--program", required=True, help="the program (tenant)")
    watch.add_argument("--threshold", type=float, default=None,
                       help="a watched min_weight (default: the first of "
                            "SEGMENTS_WATCH_THRESHOLDS)")
    watch.add_argument("--segment-type", default="growth", choices=("growth", "base", "discovery"))
    watch.add_argument("--segment-basis", default="labels",
                       choices=("labels", "assets", "label", "asset"))
    watch.add_argument("--size", type=int, default=20, help="how many top segments to show")
    watch.add_argument("--once", action="store_true",
                       help="print the table once the topic is read to its end, and exit")
    watch.add_argument("--topic", default=None,
                       help="default: SEGMENTS_COUNTS_TOPIC, else segment-counts")
    watch.add_argument("--bootstrap", default=None, help="default: KAFKA_BOOTSTRAP_SERVERS")
    watch.set_defaults(func=_watch)

    bench = sub.add_parser("bench", help="measure ingest vs raw consume, freshness, API, "
                                         "memory and recovery on a local broker")
    bench.add_argument("--events", type=int, help="N events for raw/ingest (200000)")
    bench.add_argument("--api-recommendations", type=int, help="recommendations (1000000)")
    bench.add_argument("--api-segments", type=int, help="segments of the API program (10000)")
    bench.add_argument("--clients", type=int, help="concurrent API clients (16)")
    bench.add_argument("--api-requests", type=int, help="cached API requests in all (1600)")
    bench.add_argument("--probes", type=int, help="freshness probes (100)")
    bench.add_argument("--stream-clients", type=int,
                       help="live streams open while ingesting, against none (200)")
    bench.add_argument("--long-tail-recommendations", type=int,
                       help="recommendations in families of 2-5 users (1000000)")
    bench.add_argument("--pushdown-segments", type=int,
                       help="segments of phase 9's program (100000)")
    bench.add_argument("--pushdown-workers", type=int, help="workers of phase 9 (3)")
    bench.add_argument("--pushdown-rate", type=float,
                       help="phase 9's load, events/s (half the ingest rate; 10000 alone)")
    bench.add_argument("--pushdown-only", action="store_true", help="run phase 9 alone")
    bench.add_argument("--long-tail-only", action="store_true",
                       help="run phase 8 (long-tail memory) alone")
    bench.add_argument("--freshness-only", action="store_true",
                       help="run phases 2 and 3 alone: one cold ingest, then freshness "
                            "--freshness-runs times in a row")
    bench.add_argument("--freshness-runs", type=int,
                       help="with --freshness-only: freshness runs in a row (5)")
    bench.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    bench.add_argument("--out", default="benchmarks", help="folder for results.json")
    bench.add_argument("--doc", default="BENCHMARKS.md", help="markdown file with the table")
    bench.set_defaults(func=_bench)

    migrate = sub.add_parser(
        "migrate", help="copy this deployment's state (SEGMENTS_APP_ID) into a new app id's "
                        "topics with another partition count, while it runs (README)")
    migrate.add_argument("--to-app-id", required=True, help="the new deployment's app id")
    migrate.add_argument("--partitions", type=int, required=True,
                         help="its partition count (its workers run with SEGMENTS_PARTITIONS=N)")
    migrate.set_defaults(func=_migrate)

    demo = sub.add_parser("demo", help="local Kafka + a worker + sample events, then serve")
    demo.add_argument("--port", type=int, default=9092, help="Kafka port")
    demo.add_argument("--web-port", type=int, default=6066)
    demo.add_argument("--events", type=int, default=20_000)
    demo.add_argument("--no-serve", action="store_true", help="print the segments and exit")
    demo.set_defaults(func=_demo)

    keys = sub.add_parser("keys", help="API keys: add (printed once) or revoke")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    add = keys_sub.add_parser("add", help="create a key; only its hash is stored")
    add.add_argument("name")
    add.add_argument("--programs", required=True,
                     help="comma-separated programs the key reads, or '*' for all")
    revoke = keys_sub.add_parser("revoke", help="remove a key (workers notice within a request)")
    revoke.add_argument("name")
    for p in (add, revoke):
        p.add_argument("--file", help="keys file (default: SEGMENTS_API_KEYS_FILE)")
    keys.set_defaults(func=_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
        return code
    except SegmentStreamError as exc:
        print(f"segments: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

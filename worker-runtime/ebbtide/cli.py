"""`ebbtide worker|stats|dlq`: the command line a worker pod and an operator run."""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from . import logs
from .broker_url import url_from_environment
from .errors import BrokerUrlFileError

if TYPE_CHECKING:
    from .worker.affinity import Affinity


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logs.setup(getattr(args, "sub_log_level", None) or args.log_level)
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command. Every command fails the same way: one line on stderr and
    exit 1 (2 for a usage error), as cli_errors decides; only a bug shows a traceback.
    cli_errors is imported only on a failure: it imports redis-py, ~0.17 s of a RabbitMQ
    worker's start-up that it would otherwise never need."""
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from .cli_errors import describe

        failure = describe(exc, _known_url(args))
        if failure is None:
            raise
        print(failure.message, file=sys.stderr)
        return failure.code


class _Version(argparse.Action):
    """`--version`, with the installed version looked up only when asked: the lookup
    (importlib.metadata) is a noticeable share of every worker's start-up."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from .buildinfo import version

        print(f"ebbtide {version()}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ebbtide", description=__doc__)
    p.add_argument("--version", action=_Version, help="print the version and exit")
    p.add_argument(
        "--broker-url",
        help="default: the file env EBBTIDE_BROKER_URL_FILE names, else env EBBTIDE_BROKER_URL",
    )
    p.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="run a worker process")
    w.add_argument("app", metavar="MODULE:APP", help="e.g. myproject.tasks:app")
    w.add_argument(
        "--queues",
        default=None,
        help="q1,q2 or weighted q1:3,q2:1 (default: all the app's task queues)",
    )
    w.add_argument("--strict", action="store_true", help="strict priority in --queues order")
    w.add_argument(
        "--shards",
        default=None,
        help="shard counts, e.g. emails=8,reports=2 (default: env EBBTIDE_SHARDS, else the "
        "app's declarations)",
    )
    w.add_argument(
        "--drain-shards",
        default=None,
        help="also drain this many shards (left by a shrink), e.g. emails=8 (default: env "
        "EBBTIDE_DRAIN_SHARDS)",
    )
    w.add_argument("--concurrency", type=int, default=8, help="task slots (default 8)")
    w.add_argument(
        "--prefetch", type=int, default=None, help="extra tasks held (default = concurrency)"
    )
    w.add_argument(
        "--thread-limit",
        default="auto",
        help="of the --concurrency threads running sync tasks, how many may start tasks at "
        "once: 'auto' (default) measures it, N fixes it (N = --concurrency: all of them)",
    )
    w.add_argument("--metrics-port", type=int, default=None, help="serve /metrics /healthz /readyz")
    w.add_argument("--metrics-host", default="0.0.0.0", help="bind address of the metrics port")
    w.add_argument("--grace-seconds", type=float, default=30.0, help="SIGTERM budget (default 30)")
    w.add_argument("--lease-seconds", type=float, default=30.0, help="claim lease (default 30)")
    w.add_argument(
        "--unknown-task-grace-seconds",
        type=float,
        default=None,
        help="retry a task name this worker does not know this long before the DLQ "
        "(default: the App's unknown_task_grace_seconds, 600)",
    )
    w.add_argument(
        "--processes",
        default="1",
        help="worker processes under one supervisor, each with --concurrency slots "
        "(default 1; 'auto' = the container's CPU limit)",
    )
    w.add_argument(
        "--start-children",
        choices=("fork", "exec"),
        default="fork",
        help="with --processes > 1: 'fork' (default) the first children from the supervisor "
        "once it has imported the runtime and broker client (Linux; the app is imported "
        "after the fork), or 'exec' each as a new interpreter; a restart always execs",
    )
    w.add_argument(
        "--cpu-affinity",
        default="none",
        help="pin each worker process to one CPU: 'none' (default), 'auto' (only where the "
        "container's CPUs are its own) or a CPU list such as '0-3' (process i gets the "
        "i-th CPU, in turn); see docs/runtime.md",
    )
    w.add_argument(
        "--metrics-dir",
        default=None,
        help="with --processes > 1: a writable directory (tmpfs/emptyDir) for the children's "
        "metrics files and probe sockets (default: env PROMETHEUS_MULTIPROC_DIR, else the "
        "temp dir)",
    )
    w.add_argument("--child-socket", default=None, help=argparse.SUPPRESS)
    w.add_argument("--child-index", type=int, default=0, help=argparse.SUPPRESS)
    w.add_argument("--child-metrics", action="store_true", help=argparse.SUPPRESS)
    w.add_argument("--broker-url", dest="worker_broker_url", default=None, help=argparse.SUPPRESS)
    w.add_argument("--log-level", dest="sub_log_level", default=None, help=argparse.SUPPRESS)
    w.set_defaults(run=_worker)

    s = sub.add_parser("stats", help="queue statistics, as the operator reads them")
    s.add_argument("--json", action="store_true")
    s.add_argument("--queues", default=None, help="comma-separated (default: all known)")
    s.add_argument(
        "--shards",
        default=None,
        help="shard counts of the --queues, e.g. emails=8 (default: env EBBTIDE_SHARDS, "
        "else the shards the broker knows)",
    )
    s.add_argument("--by-shard", action="store_true", help="also a row per shard")
    s.add_argument("--broker-url", dest="sub_broker_url", default=None, help=argparse.SUPPRESS)
    s.add_argument("--log-level", dest="sub_log_level", default=None, help=argparse.SUPPRESS)
    s.set_defaults(run=_stats)

    d = sub.add_parser("dlq", help="dead-letter queue: list, replay or purge")
    d.add_argument("action", choices=["list", "replay", "purge"])
    d.add_argument("--queue", default=None, help="one queue, all its shards (default: all)")
    d.add_argument(
        "--shards",
        default=None,
        help="shard counts, e.g. emails=8 (default: env EBBTIDE_SHARDS, else every shard "
        "the broker knows)",
    )
    d.add_argument(
        "--id", dest="ids", action="append", default=None, help="only this task id (repeatable)"
    )
    d.add_argument("--limit", type=int, default=1000)
    d.add_argument("--json", action="store_true")
    d.add_argument(
        "--yes", "-y", action="store_true", help="purge without asking (no terminal needed)"
    )
    d.add_argument("--broker-url", dest="sub_broker_url", default=None, help=argparse.SUPPRESS)
    d.add_argument("--log-level", dest="sub_log_level", default=None, help=argparse.SUPPRESS)
    d.set_defaults(run=_dlq)

    m = sub.add_parser(
        "migrate", help="move a Redis prefix's tasks from the key layout before hash tags"
    )
    m.add_argument(
        "--key-prefix", default=None, help="the prefix (default: EBBTIDE_KEY_PREFIX or ebbtide)"
    )
    m.add_argument("--broker-url", dest="sub_broker_url", default=None, help=argparse.SUPPRESS)
    m.add_argument("--log-level", dest="sub_log_level", default=None, help=argparse.SUPPRESS)
    m.set_defaults(run=_migrate)
    return p


def _migrate(args: argparse.Namespace) -> int:
    """brokers/redis/migrate.py, with every old worker stopped (docs/runtime.md)."""
    from .brokers import check_scheme, resolve_url
    from .brokers.redis.broker import RedisBroker
    from .brokers.redis.migrate import migrate

    url = resolve_url(_url(args))
    if check_scheme(url) in ("amqp", "amqps"):
        print("ebbtide migrate: only Redis brokers have a key layout to migrate", file=sys.stderr)
        return 2
    prefix = args.key_prefix or os.environ.get("EBBTIDE_KEY_PREFIX") or "ebbtide"
    broker = RedisBroker(url, prefix)
    try:
        done = migrate(broker.client, prefix)
    finally:
        broker.close()
    print(f"migrated {len(done.queues)} queue(s), {done.keys} key(s) of prefix {prefix!r}")
    return 0


def _flag_url(args: argparse.Namespace) -> str | None:
    return (
        getattr(args, "worker_broker_url", None)
        or getattr(args, "sub_broker_url", None)
        or args.broker_url
    )


def _url(args: argparse.Namespace) -> str | None:
    """--broker-url, else EBBTIDE_BROKER_URL_FILE's file, else EBBTIDE_BROKER_URL."""
    return _flag_url(args) or url_from_environment()


def _known_url(args: argparse.Namespace) -> str | None:
    """The URL to name in a failure line; None when the URL itself is what failed (an
    unreadable EBBTIDE_BROKER_URL_FILE must not raise again while being reported)."""
    try:
        return _url(args)
    except BrokerUrlFileError:
        return None


def load_app(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ValueError(f"bad app {spec!r}: use MODULE:APP, e.g. myproject.tasks:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    app = getattr(module, attr or "app", None)
    if app is None or not hasattr(app, "tasks"):
        raise AttributeError(f"{module_name!r} has no ebbtide App named {attr or 'app'!r}")
    return app


def _worker(args: argparse.Namespace) -> int:
    from .worker.affinity import parse_affinity, pin_process
    from .worker.processes import parse_processes, read_cpu_limit

    affinity = parse_affinity(args.cpu_affinity)
    url = _url(args)
    if flag_url := _flag_url(args):
        # Before the task module builds its App. A URL from the file is never copied
        # into the env: subprocesses of tasks would inherit it.
        os.environ["EBBTIDE_BROKER_URL"] = flag_url
    if args.child_socket is None:
        wanted = parse_processes(args.processes)
        processes = read_cpu_limit() if wanted is None else wanted
        if processes > 1:
            return _supervise(args, processes, affinity, url)
    else:
        from .worker.supervisor import bind_to_supervisor

        bind_to_supervisor()
    pin_process(args.child_index, affinity)  # before the app's import starts any thread
    from .selection import parse_queues
    from .worker.loop import Worker

    app = _worker_app(args.app)
    if url:
        app.use_broker_url(url)
    if args.unknown_task_grace_seconds is not None:
        if args.unknown_task_grace_seconds < 0:
            raise ValueError("--unknown-task-grace-seconds must be >= 0")
        app.unknown_task_grace_seconds = args.unknown_task_grace_seconds
    if args.shards or args.drain_shards:
        from .shards import parse_counts

        app.use_shards(
            parse_counts(args.shards, "--shards"), parse_counts(args.drain_shards, "--drain-shards")
        )
    spec = args.queues or ",".join(dict.fromkeys(t.queue for t in app.tasks.values())) or None
    worker = Worker(
        app,
        parse_queues(spec, strict=args.strict),
        concurrency=args.concurrency,
        prefetch=args.prefetch,
        lease_seconds=args.lease_seconds,
        grace_seconds=args.grace_seconds,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        child_socket=args.child_socket,
        child_metrics=args.child_metrics,
        thread_limit=args.thread_limit,
    )
    # What is loaded by now (modules, the app and its task checks) lives as long as the
    # process: frozen out of the collector's sight, no full collection walks it again.
    gc.freeze()
    return worker.run()


def _worker_app(spec: str) -> Any:
    """The app a worker runs, every task's argument check built: a type hint that cannot
    be resolved is a usage error now (exit 2, saying so), not a DLQ full of its tasks."""
    app = load_app(spec)
    for task in app.tasks.values():
        task.arguments.prepare()
    return app


def _supervise(
    args: argparse.Namespace, processes: int, affinity: Affinity, url: str | None
) -> int:
    """--processes N > 1: the supervisor runs N copies of this worker command, each
    without the probes port (it serves that) and with a probe socket of its own."""
    import tempfile

    from .worker import prefork
    from .worker.affinity import check_affinity
    from .worker.supervisor import Supervisor

    check_affinity(affinity)  # a CPU the pod may not use is a usage error now, not N times
    # The app is not imported here (the supervisor stays small): a child that exits with
    # a usage error before it ever answered stops the supervisor with the same code.
    flags: list[str] = []
    for flag, value in (
        ("--queues", args.queues),
        ("--concurrency", args.concurrency),
        ("--prefetch", args.prefetch),
        ("--thread-limit", args.thread_limit),
        ("--grace-seconds", args.grace_seconds),
        ("--lease-seconds", args.lease_seconds),
        ("--unknown-task-grace-seconds", args.unknown_task_grace_seconds),
        ("--shards", args.shards),
        ("--drain-shards", args.drain_shards),
        ("--cpu-affinity", args.cpu_affinity),
    ):
        if value is not None:
            flags += [flag, str(value)]
    if args.strict:
        flags.append("--strict")
    if args.metrics_port is not None:  # children record only what the supervisor exports
        flags.append("--child-metrics")
    level = args.sub_log_level or args.log_level
    head = ["--log-level", level] if level else []
    base = args.metrics_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.gettempdir()
    # The children get a private directory under `base`; the supervisor's own metrics
    # (build info, its process) stay in memory, so prometheus_client must not see it.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    fork = args.start_children == "fork" and prefork.available()
    if fork:
        prefork.preload(prefork.modules_for(url))
    elif args.start_children == "fork":
        logs.log("worker processes exec'd, not forked", reason="no pidfd (os.pidfd_open)")
    supervisor = Supervisor(
        [sys.executable, "-m", "ebbtide"],
        lambda index, socket: [
            *(*head, "worker", args.app, *flags),
            *("--child-socket", socket, "--child-index", str(index)),
        ],
        processes,
        grace_seconds=args.grace_seconds,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        metrics_dir=base,
        fork_entry=main if fork else None,
    )
    return supervisor.run()


def _broker(args: argparse.Namespace) -> Any:
    from .brokers import open_broker

    return open_broker(_url(args))


def _shard_counts(args: argparse.Namespace) -> dict[str, int] | None:
    """--shards, else EBBTIDE_SHARDS; None when neither names any queue."""
    from .shards import SHARDS_ENV, parse_counts

    if args.shards:
        return parse_counts(args.shards, "--shards")
    return parse_counts(os.environ.get(SHARDS_ENV), SHARDS_ENV) or None


def _stats(args: argparse.Namespace) -> int:
    from .brokers import read_stats
    from .message import check_queue
    from .shards import logical_queue, shard_names, sum_shards

    queues = [check_queue(q) for q in (args.queues or "").split(",") if q] or None
    counts = _shard_counts(args)
    broker = _broker(args)
    if queues is not None and counts is None:
        # No counts given: every shard the broker knows of each queue named.
        known = read_stats(broker, None)
        wanted = set(queues)
        raw = read_stats(broker, [q for q in known.queues if logical_queue(q) in wanted] or queues)
    elif queues is not None:
        raw = read_stats(broker, [s for q in queues for s in shard_names(q, counts.get(q, 1))])
    else:
        raw = read_stats(broker, None)
    sharded = sum_shards(raw)
    stats = sharded.stats
    if args.json:
        body = asdict(stats)
        body["shards"] = {
            q: {str(i): asdict(s) for i, s in parts.items()} for q, parts in sharded.shards.items()
        }
        print(json.dumps(body, indent=2, default=str))
        return 0
    cols = (
        "queue",
        "ready",
        "by-prio",
        "in-flight",
        "delayed",
        "dead",
        "oldest-age-s",
        "enqueued",
        "completed",
        "busy-s",
    )
    rows = [cols]
    for name, q in stats.queues.items():
        parts = sharded.shards.get(name, {})
        label = f"{name} ({len(parts)} shards)" if parts else name
        rows.append(_stats_row(label, q, stats.now))
        for index, part in parts.items() if args.by_shard else ():
            rows.append(_stats_row(f"  ~{index}", part, stats.now))
    _table(rows)
    print()
    wrows = [("worker", "pod", "busy", "running", "concurrency", "queues", "seen-s-ago")]
    for w in stats.workers:
        wrows.append(
            (
                w.worker_id,
                w.pod or "-",
                "yes" if w.busy else "no",
                w.running,
                w.concurrency,
                ",".join(w.queues),
                f"{max(0.0, stats.now - w.last_seen):.1f}",
            )
        )
    _table(wrows)
    return 0


def _stats_row(label: str, q: Any, now: float) -> tuple:
    prio = " ".join(f"{p}:{n}" for p, n in sorted(q.ready_by_priority.items(), reverse=True))
    age = max(0.0, now - q.oldest_ready_at) if q.oldest_ready_at is not None else 0.0
    return (
        label,
        q.ready,
        prio or "-",
        q.in_flight,
        q.delayed,
        q.dead,
        f"{age:.1f}",
        q.enqueued_total,
        q.completed_total,
        f"{q.busy_seconds_total:.1f}",
    )


def _table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _dlq(args: argparse.Namespace) -> int:
    from . import audit
    from .brokers import redact

    broker = _broker(args)
    dead = _dead_of(broker, args)
    if args.ids:
        wanted = set(args.ids)
        dead = [d for d in dead if d.task_id in wanted]
    if args.action == "list":
        if args.json:
            print(json.dumps([_dead_json(d) for d in dead], indent=2, default=repr))
        else:
            _dead_table(dead)
        return 0
    if args.action == "purge" and (refused := _confirm_purge(args, dead)) is not None:
        return refused
    done, outcome = 0, "done"
    try:
        done = broker.dlq_replay(dead) if args.action == "replay" else broker.dlq_purge(dead)
    except Exception as exc:
        outcome = f"failed: {type(exc).__name__}: {exc}"
        raise
    finally:
        ids = [d.task_id for d in dead]
        audit.record(
            f"dlq.{args.action}",
            queue=args.queue,
            count=done,
            selected=len(dead),
            broker=redact(_url(args) or ""),
            ids=ids[:AUDIT_IDS],
            **({"ids_not_listed": len(ids) - AUDIT_IDS} if len(ids) > AUDIT_IDS else {}),
            outcome=outcome,
        )
    verb = "replayed" if args.action == "replay" else "purged"
    print(f"{verb} {done} dead task(s)")
    return 0


def _dead_of(broker: Any, args: argparse.Namespace) -> list[Any]:
    """The dead tasks of --queue (every shard of it: by --shards / EBBTIDE_SHARDS, else
    every shard the broker's statistics know), or of every queue; at most --limit."""
    from .message import check_queue
    from .shards import shard_names

    if args.queue is None:
        return broker.dlq_list(None, args.limit)
    check_queue(args.queue)
    dead = broker.dlq_list(args.queue, args.limit)  # shard 0, the queue itself
    counts = _shard_counts(args)
    if counts is None:
        others = _known_shards(broker, args.queue)
    else:
        others = shard_names(args.queue, counts.get(args.queue, 1))[1:]
    for name in others:
        if len(dead) >= args.limit:
            break
        dead += broker.dlq_list(name, args.limit - len(dead))
    return dead


def _known_shards(broker: Any, queue: str) -> list[str]:
    """The shards of `queue` above shard 0 that the broker's statistics name (none
    where they cannot list queues: RabbitMQ without its management API)."""
    from .brokers import read_stats
    from .shards import split_shard

    found = []
    for name in read_stats(broker, None).queues:
        split = split_shard(name)
        if split is not None and split[0] == queue and split[1] > 0:
            found.append((split[1], name))
    return [name for _, name in sorted(found)]


AUDIT_IDS = 100  # task ids named in one audit line; past that, only how many more


def _confirm_purge(args: argparse.Namespace, dead: list[Any]) -> int | None:
    """None when the purge may go on, else the exit code: with a terminal, show what
    goes and ask y/N; without one, refuse unless --yes."""
    from .confirm import Step, confirmed, purge_step

    step = purge_step(len(dead), args.yes, sys.stdin.isatty())
    where = f"of queue {args.queue!r}" if args.queue else "of all queues"
    if step is Step.REFUSE:
        print(
            f"ebbtide: error: dlq purge would delete {len(dead)} dead task(s) {where} and "
            "there is no terminal to confirm on: pass --yes",
            file=sys.stderr,
        )
        return 2
    if step is Step.ASK:
        _dead_table(dead)
        print(f"\n{len(dead)} dead task(s) {where} will be deleted for good.")
        try:
            answer = input("Purge them? [y/N] ")
        except EOFError:
            answer = ""
        if not confirmed(answer):
            print("nothing purged")
            return 1
    return None


def _dead_table(dead: list[Any]) -> None:
    rows = [("queue", "shard", "id", "task", "died", "error")]
    for d in dead:
        body = _dead_json(d)
        died = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.died_at))
        error = str(body.get("error", ""))[:100]
        rows.append((body["queue"], body["shard"], d.task_id, body.get("task", "?"), died, error))
    _table(rows)


def _dead_json(d: Any) -> dict[str, Any]:
    try:
        body = json.loads(d.payload)
    except ValueError:
        body = {"raw": d.payload}
    if not isinstance(body, dict):
        body = {"raw": body}
    from .shards import split_shard

    queue, shard = split_shard(d.queue) or (d.queue, 0)
    return {
        "queue": queue,
        "shard": shard,
        "id": d.task_id,
        "died_at": d.died_at,
        **_shown_arguments(body),
    }


def _shown_arguments(body: dict[str, Any]) -> dict[str, Any]:
    """A dead task with an encoded body shows its arguments when they are not encrypted
    (msgpack, zstd: for the operator's eyes; `bytes` print as their repr). An encrypted
    body stays ciphertext: the CLI holds no key, and must never print its arguments."""
    from .codec import PLAIN, UnreadableBody

    fmt = body.get("fmt")
    if not isinstance(fmt, str) or fmt.endswith("+aesgcm"):
        return body
    try:
        args, kwargs = PLAIN.open(body)
    except UnreadableBody:
        return body  # unknown format, missing extra, corrupt: shown as stored
    return {**body, "args": args, "kwargs": kwargs}

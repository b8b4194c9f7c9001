"""`python -m stream_svc [run | create-table | report | backfill-buckets | redrive | forget]`; configuration
from the environment, each command's options on its command line (`python -m stream_svc COMMAND --help`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from sentiment.config import EXIT_CONFIG, EXIT_OK, answer_cli
from sentiment.errors import ConfigError, InvalidInput
from sentiment.logs import setup_logging
from stream_svc import commands
from stream_svc.config import EXIT_FAILED, EXIT_TABLE_REFUSED, EXIT_X_REFUSED, StreamConfig
from stream_svc.dynamodb import TableAccessError
from stream_svc.keys import parse_moment, parse_since

USAGE = "[--help | --version] [COMMAND [--help | OPTIONS]]"
COMMANDS = {
    "run": "stream tweets to the table (the default)",
    "create-table": "create the table, its by_time index, TTL and PITR; add what is missing",
    "report": "the analysis of a time window (--since) or of the whole table (--all)",
    "backfill-buckets": "give items written before the time keys their keys",
    "redrive": "send dead-lettered tweets back through Predict and the table",
    "forget": "delete items by tweet id (tweets deleted upstream)",
}
SUMMARY = (
    "Reads tweets (X API v2 filtered stream, or a replay file), cleans them, scores them in batches with\n"
    "model_svc's PredictBatch and writes each result to DynamoDB; what cannot be scored or written goes\n"
    "to the dead letters. AWS credentials, region and endpoint come from the standard AWS_* variables.\n"
    "\n"
    "Commands (each has its own --help):\n"
    + "\n".join(f"  {name:<16}  {meaning}" for name, meaning in COMMANDS.items())
)
EXIT_CODES = {
    EXIT_OK: "done: the replay ended, or SIGTERM/SIGINT after the drain; received = written + dead-lettered + skipped",
    EXIT_FAILED: "the counters do not balance, the source failed, the X stream ended by itself, or an input was refused",
    EXIT_CONFIG: "bad configuration or arguments (the message names the variable)",
    EXIT_TABLE_REFUSED: "DynamoDB refused the credentials, the permissions or the table",
    EXIT_X_REFUSED: "the X API refused the bearer token (401/403) X_AUTH_MAX_TRIES times",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stream_svc", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help=COMMANDS["run"])
    sub.add_parser("create-table", help=COMMANDS["create-table"])
    rep = sub.add_parser("report", help=COMMANDS["report"])
    span = rep.add_mutually_exclusive_group()
    span.add_argument("--since", metavar="24h|ISO", help="window start: a duration back from now, or a time")
    span.add_argument("--all", action="store_true", help="the whole table, by a parallel Scan (the default)")
    rep.add_argument("--until", metavar="ISO", help="window end (default: now; with --since only)")
    rep.add_argument("--model-version", metavar="V", help="only the tweets analysed by model version V")
    rep.add_argument("--plot", metavar="PNG", help="also draw sentiment over time to this file")
    rep.add_argument("--recent", type=int, default=5, help="recent examples to show")
    rep.add_argument("--json", metavar="PATH", help="also write the figures as JSON to this file")
    rep.add_argument("--segments", type=int, default=4, help="parallel Scan segments (--all)")
    back = sub.add_parser("backfill-buckets", help=COMMANDS["backfill-buckets"])
    back.add_argument("--rate", type=float, default=200.0, help="updates per second at most")
    back.add_argument("--segments", type=int, default=4, help="parallel Scan segments")
    back.add_argument("--state", type=Path, default=Path("backfill-buckets.state.json"), help="resume file")
    red = sub.add_parser("redrive", help=COMMANDS["redrive"])
    red.add_argument("location", metavar="FILE|FOLDER|s3://bucket/prefix")
    forget = sub.add_parser("forget", help=COMMANDS["forget"])
    forget.add_argument("--ids", required=True, metavar="FILE", help="tweet ids, one per line ('-': stdin)")
    forget.add_argument(
        "--dead-letters",
        metavar="FILE|FOLDER|s3://bucket/prefix",
        help="also remove them from these dead letters (default: DEAD_LETTER_URI; '' skips them)",
    )
    return parser


def _report_request(args: argparse.Namespace) -> commands.ReportRequest:
    now = datetime.now(UTC).replace(microsecond=0)
    if args.until and not args.since:
        raise ConfigError("--until needs --since")
    try:
        since = parse_since(args.since, now) if args.since else None
    except ValueError as exc:
        raise ConfigError(f"--since: {exc}") from None
    until = parse_moment(args.until) if args.until else now
    if until is None:
        raise ConfigError(f"--until {args.until!r} is not an ISO 8601 time")
    if since is not None and since >= until:
        raise ConfigError("--since must be before --until")
    return commands.ReportRequest(
        since, until, model_version=args.model_version, recent=args.recent, segments=max(1, args.segments)
    )


def _dispatch(args: argparse.Namespace, config: StreamConfig) -> int:
    if args.command == "create-table":
        return asyncio.run(commands.create_table_command(config))
    if args.command == "report":
        summary = asyncio.run(commands.build_report(config, _report_request(args)))
        commands.print_report(summary, args.plot, args.json)
        return EXIT_OK
    if args.command == "backfill-buckets":
        return asyncio.run(commands.backfill_command(config, args.rate, max(1, args.segments), args.state))
    if args.command == "redrive":
        return asyncio.run(commands.redrive_command(config, args.location))
    if args.command == "forget":
        return asyncio.run(commands.forget_command(config, args.ids, args.dead_letters))
    from stream_svc import app  # the stream's own imports (gRPC, tweepy) are not the other commands' start-up

    return asyncio.run(app.run(config))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"], ["--version"]):
        answered = answer_cli(argv, "stream_svc", SUMMARY, StreamConfig, EXIT_CODES, os.environ, usage=USAGE)
        return EXIT_CONFIG if answered is None else answered
    args = _parser().parse_args(argv)
    args.command = args.command or "run"
    try:
        config = StreamConfig.from_env(os.environ, require_source=args.command == "run")
        setup_logging(config.log_level)
        return _dispatch(args, config)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except TableAccessError as exc:
        print(f"stream_svc stopped: {exc}", file=sys.stderr)
        return EXIT_TABLE_REFUSED
    except InvalidInput as exc:  # e.g. a dead-letter object too large to read back
        print(f"stream_svc stopped: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

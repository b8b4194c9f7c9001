"""`python -m stream_svc [run | create-table | report [--plot out.png] [--json out.json]]`; configuration from the environment."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path

from sentiment.errors import ConfigError
from sentiment.logs import setup_logging
from stream_svc import app, dynamodb, report
from stream_svc.config import StreamConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_svc", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="stream tweets to the table (the default)")
    commands.add_parser("create-table", help="create the DynamoDB table (PAY_PER_REQUEST) unless it exists")
    report_parser = commands.add_parser("report", help="print the analysis of the table")
    report_parser.add_argument("--plot", metavar="PNG", help="also draw sentiment over time to this file")
    report_parser.add_argument("--recent", type=int, default=5, help="recent examples to show")
    report_parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    command = args.command or "run"
    try:
        config = StreamConfig.from_env(os.environ, require_source=command == "run")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    try:
        if command == "create-table":
            created = asyncio.run(dynamodb.create_table(config.dynamodb_table))
            print(f"table {config.dynamodb_table} {'created' if created else 'already exists'}")
            return 0
        if command == "report":
            items = asyncio.run(dynamodb.scan_items(config.dynamodb_table))
            summary = report.summarize(items, recent=args.recent)
            print(report.render(summary))
            if args.plot:
                print(f"plot written to {report.plot(items, args.plot)}")
            if args.json:
                Path(args.json).write_text(json.dumps(dataclasses.asdict(summary), indent=2, default=str))
            return 0
        return asyncio.run(app.run(config))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

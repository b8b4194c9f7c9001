"""Report benchmark: a one-hour window read through the `by_time` index (Query) beside the Scan path, on
tables of 100k and 1M items; and `report --all` (parallel Scan, streamed) on the largest.

Each table holds `--per-hour` items an hour (default 2,000), so the hour measured holds the same
items whatever the table's size, and the table grows by hours. Tables are filled with ImportTable from
S3 (DynamoDB JSON, gzip), which moto runs inside its server: 1,600-2,400 items/s here, against
1,200-1,500 for BatchWriteItem at concurrency 16 (moto parses every request through its generic
model-driven parser, whatever the client does). 1M items take about 9.5 minutes, and the whole run (both
sizes, every path) about 35 minutes; `--sizes 10000,40000 --per-hour 1000` is a quick mode (about
4 minutes).

Paths, each run as users run it (a child process; its own peak RSS, VmHWM):
- Query: `python -m stream_svc report --since H --until H+1h` (one Query per bucket, no Scan);
- Scan: the design before the index: a paginated Scan of the whole table, filtered to the hour in the
  client (what `report` did); on big tables it is stopped after `--scan-pages` pages and its time
  projected from the items it read (marked `projected`), since it reads every item whatever the window;
- `report --all`: the parallel Scan (4 segments), folded page by page.

Two endpoints, one moto process: stock moto, and moto with an index (`benchmarks/moto_indexed.py`,
toggled per table by a tag). Stock moto answers any Query by a pass over the whole table, so its Query
time grows with the table even though the items read do not; the indexed one costs what DynamoDB's
does, in proportion to what is read. Writes benchmarks/results/report.json.
`python -m benchmarks.bench_report [--sizes 100000,1000000] [--per-hour 2000] [--scan-pages 10]`
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3

from benchmarks.common import RESULTS_DIR, ROOT, machine, utc_now, write_results
from benchmarks.moto_indexed import TAG, IndexedLocalAws
from sentiment.prediction import Prediction
from stream_svc.dynamodb import INDEX_DEFINITION, KEY_ATTRIBUTES, to_dynamodb
from stream_svc.items import make_item
from stream_svc.tweets import Tweet

RESULTS = RESULTS_DIR / "report.json"
START = datetime(2026, 1, 1, tzinfo=UTC)
IMPORT_PART = 50_000  # items per S3 object of the import
LABELS = (("POSITIVE", 0.91), ("NEGATIVE", 0.08), ("NEUTRAL", 0.55))
TEXT = "the new phone is {} honestly, what a day https://t.co/{:08x} #tech"


def typed_item(i: int, per_hour: int) -> dict[str, Any]:
    moment = START + timedelta(seconds=i * 3600 / per_hour)
    label, score = LABELS[i % 3]
    date = moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    tweet = Tweet(str(1_900_000_000_000_000_000 + i), f"user_{i % 997}", TEXT.format(label.lower(), i), date)
    version = "20260101-0000" if i % 2 else "20251215-0000"
    item = make_item(tweet, tweet.text, Prediction(label, score, version), tweet.date)
    return to_dynamodb(item)


def fill(table: str, n: int, per_hour: int, bucket: str) -> dict[str, Any]:
    """ImportTable of `n` items into a new `table` (with the by_time index); then `create-table` adds TTL
    and PITR to it, as on any table made elsewhere. Returns the timings."""
    s3, dynamodb = boto3.client("s3"), boto3.client("dynamodb")
    started = time.perf_counter()
    for part, lo in enumerate(range(0, n, IMPORT_PART)):
        lines = "".join(
            json.dumps({"Item": typed_item(i, per_hour)}) + "\n" for i in range(lo, min(n, lo + IMPORT_PART))
        )
        s3.put_object(
            Bucket=bucket, Key=f"{table}/part-{part:05d}.json.gz", Body=gzip.compress(lines.encode(), 1)
        )
    uploaded = time.perf_counter()
    arn = dynamodb.import_table(
        S3BucketSource={"S3Bucket": bucket, "S3KeyPrefix": f"{table}/"},
        InputFormat="DYNAMODB_JSON",
        InputCompressionType="GZIP",
        TableCreationParameters={
            "TableName": table,
            "AttributeDefinitions": KEY_ATTRIBUTES,
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "BillingMode": "PAY_PER_REQUEST",
            "GlobalSecondaryIndexes": [INDEX_DEFINITION],
        },
    )["ImportTableDescription"]["ImportArn"]
    while (done := dynamodb.describe_import(ImportArn=arn)["ImportTableDescription"])[
        "ImportStatus"
    ] == "IN_PROGRESS":
        time.sleep(1)
    imported = time.perf_counter()
    if done["ImportStatus"] != "COMPLETED" or done.get("ImportedItemCount") != n:
        raise RuntimeError(f"import of {table}: {done}")
    code, out, _ = run_child(["-m", "stream_svc", "create-table"], table)
    assert code == 0, out
    return {
        "items": n,
        "generate_and_upload_s": uploaded - started,
        "import_s": imported - uploaded,
        "items_per_s": n / (imported - started),
        "create_table_output": out.strip().splitlines(),
    }


# Runs `-m MODULE ARGS` as python does, then prints the process's own peak RSS: VmHWM counts this
# program's memory only, where wait4's ru_maxrss would also count the bench process it was forked from.
PEAK_RSS_RUNNER = """
import atexit, runpy, sys
def peak():
    with open("/proc/self/status") as status:
        hwm = [line.split()[1] for line in status if line.startswith("VmHWM:")]
    print("PEAK_RSS_KB", hwm[0], flush=True)
atexit.register(peak)
module, sys.argv = sys.argv[2], sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_child(args: list[str], table: str) -> tuple[int, str, dict[str, float]]:
    """`python -m MODULE ...` (`args`) with DYNAMODB_TABLE=table: (exit code, output, {"seconds",
    "peak_rss_mib"})."""
    env = {**os.environ, "DYNAMODB_TABLE": table, "LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-c", PEAK_RSS_RUNNER, *args]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    lines = done.stdout.splitlines()
    peak = [int(line.split()[1]) / 1024 for line in lines if line.startswith("PEAK_RSS_KB ")]
    out = "\n".join(line for line in lines if not line.startswith("PEAK_RSS_KB ")) + done.stderr
    return done.returncode, out, {"seconds": seconds, "peak_rss_mib": peak[0] if peak else 0.0}


def set_indexed(table: str, on: bool) -> None:
    client = boto3.client("dynamodb")
    arn = client.describe_table(TableName=table)["Table"]["TableArn"]
    if on:
        client.tag_resource(ResourceArn=arn, Tags=[TAG])
    else:
        client.untag_resource(ResourceArn=arn, TagKeys=[TAG["Key"]])


def query_path(table: str, since: datetime, work: Path) -> dict[str, Any]:
    figures = work / "window.json"
    until = since + timedelta(hours=1)
    args = ["-m", "stream_svc", "report", "--since", since.isoformat(), "--until", until.isoformat()]
    code, out, usage = run_child([*args, "--json", str(figures)], table)
    assert code == 0, out
    summary = json.loads(figures.read_text())
    reads = summary["reads"]
    return {
        **usage,
        "report_seconds": reads["seconds"],  # inside the command, without Python's start
        "items_in_hour": summary["total"],
        "items_read": reads["items_read"],
        "requests": reads["requests"],
    }


def scan_path(
    table: str, since: datetime, table_items: int, hour_items: int, max_pages: int
) -> dict[str, Any]:
    """The Scan path; `hour_items` (what the hour holds, as the Query path counted) is the ratio's base
    when the Scan is stopped early and so saw only part of the hour (`items_in_hour_seen`)."""
    until = since + timedelta(hours=1)
    args = [
        "-m",
        "benchmarks.bench_report",
        "--scan-child",
        table,
        since.isoformat(),
        until.isoformat(),
        str(max_pages),
    ]
    code, out, usage = run_child(args, table)
    assert code == 0, out
    found = json.loads(out.strip().splitlines()[-1])
    result = {**usage, **found, "projected": not found["complete"]}
    if not found["complete"]:  # a Scan reads every item, whatever the window
        result["items_in_hour_seen"], result["items_in_hour"] = found["items_in_hour"], hour_items
        result["seconds"] = found["scan_seconds"] * table_items / max(1, found["items_read"])
        result["items_read"] = table_items
    return result


async def scan_child(table: str, since: str, until: str, max_pages: int) -> dict[str, Any]:
    """The design before the index: every item by a paginated Scan, held in a list, filtered in the client."""
    import aioboto3

    from stream_svc.dynamodb import client_config, from_dynamodb

    items: list[dict[str, Any]] = []
    read = pages = 0
    started = time.perf_counter()
    async with aioboto3.Session().client("dynamodb", config=client_config()) as client:
        async for page in client.get_paginator("scan").paginate(TableName=table):
            pages += 1
            read += page["ScannedCount"]
            items.extend(from_dynamodb(raw) for raw in page.get("Items", []))
            if pages >= max_pages:
                break
    lo, hi = datetime.fromisoformat(since), datetime.fromisoformat(until)
    in_hour = [item for item in items if lo <= datetime.fromisoformat(item["data"]) < hi]
    complete = pages < max_pages or "LastEvaluatedKey" not in page
    return {"scan_seconds": time.perf_counter() - started, "items_read": read, "pages": pages, "items_in_hour": len(in_hour), "complete": complete}  # fmt: skip


def report_all(table: str, work: Path) -> dict[str, Any]:
    figures = work / "all.json"
    code, out, usage = run_child(["-m", "stream_svc", "report", "--all", "--json", str(figures)], table)
    assert code == 0, out
    summary = json.loads(figures.read_text())
    return {**usage, "items": summary["total"], "items_read": summary["reads"]["items_read"]}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median in-command time (the machine is shared: runs vary by 2x), with every run's times."""
    ordered = sorted(runs, key=lambda r: r["report_seconds"])
    return {
        **ordered[len(ordered) // 2],
        "runs_report_seconds": [r["report_seconds"] for r in runs],
        "runs_seconds": [round(r["seconds"], 3) for r in runs],
    }


def measure_size(
    n: int, per_hour: int, scan_pages: int, repeats: int, bucket: str, work: Path
) -> dict[str, Any]:
    table = f"bench-report-{n}"
    print(f"filling {n:,} items ({per_hour:,} an hour) ...", flush=True)
    filled = fill(table, n, per_hour, bucket)
    print(f"  filled in {filled['generate_and_upload_s'] + filled['import_s']:.0f} s", flush=True)
    hour = START + timedelta(hours=(n // per_hour) // 2)  # a full hour in the middle
    out: dict[str, Any] = {"items": n, "fill": filled, "hour": hour.isoformat()}
    for endpoint, indexed in (("moto", False), ("indexed", True)):
        set_indexed(table, indexed)
        query_path(table, hour, work)  # warm: the indexed endpoint builds its index once, after the writes
        print(f"  {endpoint}: Query path x{repeats} ...", flush=True)
        out[f"query_{endpoint}"] = median_run([query_path(table, hour, work) for _ in range(repeats)])
        print(f"  {endpoint}: Scan path ...", flush=True)
        hour_items = out[f"query_{endpoint}"]["items_in_hour"]
        pages = scan_pages if n > 150_000 else 10**9
        out[f"scan_{endpoint}"] = scan_path(table, hour, n, hour_items, pages)
    print("  report --all (indexed endpoint) ...", flush=True)
    out["report_all"] = report_all(table, work)
    boto3.client("dynamodb").delete_table(TableName=table)  # moto keeps every item in memory
    return out


def main(sizes: list[int], per_hour: int, scan_pages: int, repeats: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-report-") as tmp,
        IndexedLocalAws(log_path=Path(tmp) / "moto.log") as aws,
    ):
        os.environ.update(aws.env)
        boto3.client("s3").create_bucket(Bucket="bench-seed")
        runs = [measure_size(n, per_hour, scan_pages, repeats, "bench-seed", Path(tmp)) for n in sizes]
    small, large = runs[0], runs[-1]
    return {
        "when": utc_now(),
        "machine": machine("cpus", "python"),
        "per_hour": per_hour,
        "runs": runs,
        "query_time_large_vs_small": {
            e: large[f"query_{e}"]["report_seconds"] / small[f"query_{e}"]["report_seconds"]
            for e in ("moto", "indexed")
        },
        "targets": {
            "items_read_vs_hour": 1.05,
            "query_seconds": 2.0,
            "flat_within": 0.2,
            "report_all_rss_mib": 300,
        },
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\none-hour window ({result['per_hour']:,} items an hour)")
    print(
        f"{'table':>10} {'endpoint':<8} {'path':<6} {'seconds':>9} {'in report':>10} {'items read':>11} {'read/hour':>9} {'peak RSS MiB':>12}"
    )
    for run in result["runs"]:
        for endpoint in ("moto", "indexed"):
            for path in ("query", "scan"):
                row = run[f"{path}_{endpoint}"]
                inside = f"{row['report_seconds']:.2f}" if "report_seconds" in row else "-"
                seconds = f"{row['seconds']:.1f}{'*' if row.get('projected') else ''}"
                ratio = row["items_read"] / max(1, row["items_in_hour"])
                rss = "-" if row.get("projected") else f"{row['peak_rss_mib']:.0f}"
                print(
                    f"{run['items']:>10,} {endpoint:<8} {path:<6} {seconds:>9} {inside:>10} {row['items_read']:>11,} {ratio:>9.2f} {rss:>12}"
                )
    print(
        "(* projected from the first pages: a Scan reads the whole table whatever the window; 'in report' is the command's own time, without Python's start)"
    )
    for run in result["runs"]:
        a, f = run["report_all"], run["fill"]
        print(
            f"report --all on {run['items']:,} items: {a['seconds']:.1f} s, {a['items_read']:,} items read, peak RSS {a['peak_rss_mib']:.0f} MiB"
        )
        print(
            f"fill of {run['items']:,} items: {f['generate_and_upload_s']:.0f} s generate + upload, {f['import_s']:.0f} s ImportTable ({f['items_per_s']:.0f} items/s)"
        )
    ratios = result["query_time_large_vs_small"]
    print(
        f"Query time, largest / smallest table: indexed {ratios['indexed']:.2f}, stock moto {ratios['moto']:.2f} (target: within 1.2)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--per-hour", type=int, default=2000)
    parser.add_argument("--scan-pages", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each Query path (the median counts)")
    parser.add_argument(
        "--scan-child", nargs=4, metavar=("TABLE", "SINCE", "UNTIL", "PAGES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.scan_child:
        table, since, until, pages = args.scan_child
        print(json.dumps(asyncio.run(scan_child(table, since, until, int(pages)))))
        sys.exit(0)
    outcome = main([int(s) for s in args.sizes.split(",")], args.per_hour, args.scan_pages, args.repeats)
    print_table(outcome)
    write_results(RESULTS, outcome)
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")

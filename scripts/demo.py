"""`make demo`: the whole pipeline on one machine, step by step, on embedded defaults.

1. a local AWS endpoint (moto, S3 + DynamoDB) on a free loopback port, the bucket and the analysis table;
2. a dataset uploaded to S3 (generated, or DATASET=path/to/sentiment140.csv[.gz]);
3. train_svc and model_svc started; Train called with grpcurl as the README shows; WatchJob followed until the
   model is promoted; model_svc picks it up;
4. stream_svc run on a replay of tweets the model has not seen, writing to DynamoDB;
5. the report printed and a PNG chart written;
6. everything stopped; each program's log kept under var/logs/.

`--up` leaves the stack running (state in var/stack.json) for grpcurl by hand; `--down` stops it.
Sizes come from the environment: DEMO_ROWS, DEMO_TWEETS, DEMO_EPOCHS, DEMO_MAX_ROWS; DEMO_VAR_DIR (default var/); LOCAL_AWS=0 uses the standard AWS
configuration (real AWS, or whatever AWS_ENDPOINT_URL names) instead of starting moto; DEMO_BUCKET names the bucket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from scripts.demo_grpcurl import GRPCURL, follow_job, grpcurl, wait_model
from scripts.demo_stack import Stack, stop_state, write_state
from scripts.local_aws import LocalAws, free_port
from sentiment.synthetic import write_jsonl, write_sentiment140

ROOT = Path(__file__).resolve().parents[1]
VAR = Path(os.environ.get("DEMO_VAR_DIR") or ROOT / "var")  # a script, run once: read at start
LOGS = VAR / "logs"
DEMO_DIR = VAR / "demo"
STATE = VAR / "stack.json"


# The generated tweets are few and their signal strong: smaller batches than the recipe's 1024 give the
# optimiser enough steps to learn them in a few epochs.
GENERATED_DATA_PARAMS = {"epochs": 4, "batch_size": 128}


class DemoError(Exception):
    """A step failed; the message says which and the log to read."""


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


@contextmanager
def step(number: int, title: str, log: Path | None = None) -> Iterator[None]:
    say(f"[{number}/6] {title}")
    started = time.monotonic()
    try:
        yield
    except DemoError:
        raise
    except Exception as exc:
        where = f"; read {shown(log)}" if log else ""
        raise DemoError(f"step {number} ({title}) failed: {exc}{where}") from exc
    print(f"    done in {time.monotonic() - started:.1f}s", flush=True)


def settings() -> dict[str, Any]:
    return {
        "rows": int(os.environ.get("DEMO_ROWS", "20000")),
        "tweets": int(os.environ.get("DEMO_TWEETS", "2000")),
        "epochs": int(os.environ.get("DEMO_EPOCHS", "0")),  # 0: the demo's choice for generated data
        "max_rows": int(os.environ.get("DEMO_MAX_ROWS", "0")),
        "dataset": os.environ.get("DATASET", ""),
        "local_aws": os.environ.get("LOCAL_AWS", "1") != "0",
        "bucket": os.environ.get("DEMO_BUCKET", "tweet-sentiment-demo"),
        "table": os.environ.get("DYNAMODB_TABLE", "tweet_sentiment"),
    }


@dataclass
class Demo:
    """One run's settings, the environment its programs get, what it started and what it found."""

    cfg: dict[str, Any]
    up: bool
    env: dict[str, str]
    stack: Stack
    aws: LocalAws | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        for name in self.stack.stop():
            say(f"{name} did not stop within 20s; killed it")
        if self.aws:
            self.aws.stop()


def aws_endpoint(demo: Demo) -> None:
    """1: moto (unless LOCAL_AWS=0), the bucket and the analysis table."""
    cfg, env = demo.cfg, demo.env
    if cfg["local_aws"]:
        demo.aws = LocalAws(log_path=LOGS / "aws.log").start()
        env.update(demo.aws.env)
        print(f"    moto (S3 + DynamoDB) on {demo.aws.endpoint}")
    os.environ.update(env)
    s3 = boto3.client("s3")
    try:
        s3.create_bucket(Bucket=cfg["bucket"])
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    subprocess.run(
        [sys.executable, "-m", "stream_svc", "create-table"],
        cwd=ROOT,
        env={**env, "DYNAMODB_TABLE": cfg["table"]},
        check=True,
        capture_output=True,
    )
    print(f"    bucket s3://{cfg['bucket']}, table {cfg['table']}")


def upload_dataset(demo: Demo, dataset_key: str) -> None:
    """2: the dataset (DATASET, or one generated) uploaded to the bucket."""
    cfg = demo.cfg
    source = Path(cfg["dataset"]) if cfg["dataset"] else DEMO_DIR / "generated.csv.gz"
    if not cfg["dataset"]:
        write_sentiment140(source, cfg["rows"], seed=1)
    boto3.client("s3").upload_file(str(source), cfg["bucket"], dataset_key)
    print(f"    {source} -> s3://{cfg['bucket']}/{dataset_key} ({source.stat().st_size / 1e6:.1f} MB)")


def train_request(cfg: dict[str, Any], dataset_uri: str) -> dict[str, Any]:
    request: dict[str, Any] = {"dataset_uri": dataset_uri, "promote": True, "min_accuracy": 0.6}
    params = {} if cfg["dataset"] else dict(GENERATED_DATA_PARAMS)
    if cfg["epochs"]:
        params["epochs"] = cfg["epochs"]
    if cfg["max_rows"]:
        params["max_rows"] = cfg["max_rows"]
    if params:
        request["params"] = params
    return request


def train_and_load(demo: Demo, dataset_uri: str) -> None:
    """3: train_svc and model_svc started; Train with grpcurl; WatchJob until promoted; model_svc loads it."""
    store_uri = f"s3://{demo.cfg['bucket']}/store"
    # `make up` takes the well-known ports, so the README's grpcurl lines work as written.
    train_port, model_port = (50051, 50052) if demo.up else (free_port(), free_port())
    train = demo.stack.start("train_svc", {"STORE_URI": store_uri}, port=train_port)
    model = demo.stack.start("model_svc", {"STORE_URI": store_uri, "RELOAD_INTERVAL_S": "1"}, port=model_port)
    asyncio.run(train.wait_serving(timeout_s=120))
    request = train_request(demo.cfg, dataset_uri)
    print(
        f"    grpcurl -plaintext -d '{json.dumps(request)}' {train.address} sentiment.v1.TrainService/Train"
    )
    job = json.loads(grpcurl(train.address, "sentiment.v1.TrainService/Train", request))
    print(f"    job {job['job_id']} {job['state']}")
    job = follow_job(train.address, job["job_id"])
    if job.get("state") != "SUCCEEDED" or not job.get("promoted"):
        raise RuntimeError(
            f"job ended {job.get('state')} (promoted={job.get('promoted', False)}): {job.get('error', '')}"
        )
    version = job["model_version"]
    metrics = job.get("metrics", {})
    print(f"    model {version}: accuracy {metrics.get('accuracy', 0):.3f}, F1 {metrics.get('f1', 0):.3f}")
    wait_model(model, version)
    print(f"    model_svc serves {version}")
    demo.summary.update(
        model_version=version, metrics=metrics, train_addr=train.address, model_addr=model.address
    )


def stream_replay(demo: Demo) -> None:
    """4: stream_svc on a replay of tweets the model has not seen, to its end, writing to DynamoDB."""
    cfg = demo.cfg
    replay = write_jsonl(DEMO_DIR / "replay.jsonl", cfg["tweets"], seed=99)
    dead_letter = DEMO_DIR / "dead-letter.jsonl"
    dead_letter.unlink(missing_ok=True)
    stream = demo.stack.start(
        "stream_svc",
        {
            "SOURCE": "replay",
            "REPLAY_PATH": str(replay),
            "MODEL_TARGET": f"dns:///{demo.summary['model_addr']}",
            "DYNAMODB_TABLE": cfg["table"],
            "DEAD_LETTER_PATH": str(dead_letter),
        },
    )
    code = stream.wait(timeout_s=600)
    if code != 0:
        raise RuntimeError(f"stream_svc exited with {code}")
    items = count_items(cfg["table"])
    print(f"    {items} items in {cfg['table']}")
    demo.summary.update(items=items, tweets=cfg["tweets"], dead_lettered=count_lines(dead_letter))


def report(demo: Demo) -> None:
    """5: `stream_svc report`: the figures as JSON and the PNG chart."""
    chart, figures = DEMO_DIR / "sentiment.png", DEMO_DIR / "report.json"
    subprocess.run(
        [sys.executable, "-m", "stream_svc", "report", "--plot", str(chart), "--json", str(figures)],
        cwd=ROOT,
        env={**demo.env, "DYNAMODB_TABLE": demo.cfg["table"]},
        check=True,
    )
    print(f"    chart: {shown(chart)}")
    demo.summary.update(report=json.loads(figures.read_text()), chart=str(chart))


def leave_running(demo: Demo) -> None:
    """`--up`: the state `--down` needs written to var/stack.json, and the variables to export for grpcurl."""
    state = write_state(STATE, demo.stack, demo.aws, demo.summary)
    say(
        f"stack left running: train_svc {state['train_addr']}, model_svc {state['model_addr']}; "
        "`make down` stops it"
    )
    for key, value in state["env"].items():
        print(f"    export {key}={value}")


def run(up: bool) -> dict[str, Any]:
    """Run the demo; returns the summary it also writes to var/demo/summary.json."""
    cfg = settings()
    for folder in (LOGS, DEMO_DIR):
        folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    env.update({"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "METRICS_PORT": "0"})
    demo = Demo(cfg, up, env, Stack(env, LOGS))
    dataset_key = "datasets/" + (Path(cfg["dataset"]).name if cfg["dataset"] else "generated.csv.gz")
    try:
        with step(1, "local AWS endpoint, bucket and analysis table", LOGS / "aws.log"):
            aws_endpoint(demo)
        with step(2, "dataset uploaded to S3"):
            upload_dataset(demo, dataset_key)
        title = "train_svc + model_svc; Train with grpcurl; model promoted and loaded"
        with step(3, title, LOGS / "train_svc.log"):
            train_and_load(demo, f"s3://{cfg['bucket']}/{dataset_key}")
        title = f"stream_svc on a replay of {cfg['tweets']} unseen tweets -> DynamoDB"
        with step(4, title, LOGS / "stream_svc.log"):
            stream_replay(demo)
        with step(5, "report"):
            report(demo)
        (DEMO_DIR / "summary.json").write_text(json.dumps(demo.summary, indent=2, default=str))
        if up:
            leave_running(demo)
            return demo.summary
    except BaseException:
        demo.stop()
        raise
    with step(6, "stopping everything (logs kept under var/logs)"):
        demo.stop()
    return demo.summary


def count_items(table: str) -> int:
    paginator = boto3.client("dynamodb").get_paginator("scan")
    return sum(page["Count"] for page in paginator.paginate(TableName=table, Select="COUNT"))


def count_lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


def down() -> None:
    if stop_state(STATE):
        say("stack stopped")
    else:
        say("nothing running (no var/stack.json)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--up", action="store_true", help="leave the stack running (stop it with --down)")
    parser.add_argument("--down", action="store_true", help="stop a stack left running by --up")
    args = parser.parse_args(argv)
    if args.down:
        down()
        return 0
    if args.up and STATE.exists():
        say("a stack is already running (var/stack.json); `make down` first")
        return 1
    if not shutil.which(GRPCURL):
        say(f"grpcurl not found at {GRPCURL}; run `make setup`")
        return 1
    started = time.monotonic()
    try:
        summary = run(up=args.up)
    except DemoError as exc:
        say(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; every program was stopped")
        return 130
    say(
        f"demo finished in {time.monotonic() - started:.0f}s: model {summary['model_version']}, {summary['items']} tweets analysed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

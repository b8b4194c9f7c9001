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
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

from scripts.local_aws import LocalAws, free_port
from sentiment.synthetic import write_jsonl, write_sentiment140

ROOT = Path(__file__).resolve().parents[1]
VAR = Path(os.environ.get("DEMO_VAR_DIR") or ROOT / "var")  # a script, run once: read at start
LOGS = VAR / "logs"
STATE = VAR / "stack.json"
GRPCURL = str(Path(sys.executable).with_name("grpcurl"))


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


def grpcurl(address: str, method: str, body: dict[str, Any] | None = None, *, max_time_s: float = 30) -> str:
    """Run the real grpcurl binary as a user would; returns stdout, raises with its stderr."""
    command = [GRPCURL, "-plaintext", "-max-time", str(max_time_s)]
    if body is not None:
        command += ["-d", json.dumps(body)]
    command += [address, method]
    result = subprocess.run(command, capture_output=True, text=True, timeout=max_time_s + 10)
    if result.returncode != 0:
        raise RuntimeError(f"grpcurl {method} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


class Stack:
    """The programs of one demo run: started with their logs under var/logs, stopped with SIGTERM."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, module: str, extra_env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        log = open(LOGS / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env={**self.env, **extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo, which then stops each program in order
        )

    def wait_serving(self, name: str, address: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}")
            try:
                if '"SERVING"' in grpcurl(address, "grpc.health.v1.Health/Check", {}, max_time_s=2):
                    return
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{name} was not SERVING on {address} within {timeout_s:.0f}s")

    def stop(self, grace_s: float = 20) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    say(f"{name} did not stop within {grace_s:.0f}s; killing it")
                    proc.kill()
                    proc.wait()


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


def run(up: bool) -> dict[str, Any]:
    """Run the demo; returns the summary it also writes to var/demo/summary.json."""
    cfg = settings()
    demo_dir = VAR / "demo"
    for folder in (LOGS, demo_dir):
        folder.mkdir(parents=True, exist_ok=True)
    aws: LocalAws | None = None
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    env.update({"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "METRICS_PORT": "0"})
    stack = Stack(env)
    summary: dict[str, Any] = {}
    try:
        with step(1, "local AWS endpoint, bucket and analysis table", LOGS / "aws.log"):
            if cfg["local_aws"]:
                aws = LocalAws(log_path=LOGS / "aws.log").start()
                env.update(aws.env)
                print(f"    moto (S3 + DynamoDB) on {aws.endpoint}")
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

        dataset_key = "datasets/" + (Path(cfg["dataset"]).name if cfg["dataset"] else "generated.csv.gz")
        dataset_uri = f"s3://{cfg['bucket']}/{dataset_key}"
        with step(2, "dataset uploaded to S3"):
            source = Path(cfg["dataset"]) if cfg["dataset"] else demo_dir / "generated.csv.gz"
            if not cfg["dataset"]:
                write_sentiment140(source, cfg["rows"], seed=1)
            s3.upload_file(str(source), cfg["bucket"], dataset_key)
            print(f"    {source} -> {dataset_uri} ({source.stat().st_size / 1e6:.1f} MB)")

        store_uri = f"s3://{cfg['bucket']}/store"
        # `make up` takes the well-known ports, so the README's grpcurl lines work as written.
        train_port, model_port = (50051, 50052) if up else (free_port(), free_port())
        train_addr, model_addr = f"127.0.0.1:{train_port}", f"127.0.0.1:{model_port}"
        with step(
            3, "train_svc + model_svc; Train with grpcurl; model promoted and loaded", LOGS / "train_svc.log"
        ):
            stack.start("train_svc", "train_svc", {"LISTEN_ADDR": train_addr, "STORE_URI": store_uri})
            stack.start(
                "model_svc",
                "model_svc",
                {"LISTEN_ADDR": model_addr, "STORE_URI": store_uri, "RELOAD_INTERVAL_S": "1"},
            )
            stack.wait_serving("train_svc", train_addr)
            request = {"dataset_uri": dataset_uri, "promote": True, "min_accuracy": 0.6}
            params = {} if cfg["dataset"] else dict(GENERATED_DATA_PARAMS)
            if cfg["epochs"]:
                params["epochs"] = cfg["epochs"]
            if cfg["max_rows"]:
                params["max_rows"] = cfg["max_rows"]
            if params:
                request["params"] = params
            print(
                f"    grpcurl -plaintext -d '{json.dumps(request)}' {train_addr} sentiment.v1.TrainService/Train"
            )
            job = json.loads(grpcurl(train_addr, "sentiment.v1.TrainService/Train", request))
            print(f"    job {job['job_id']} {job['state']}")
            job = follow_job(train_addr, job["job_id"])
            if job.get("state") != "SUCCEEDED" or not job.get("promoted"):
                raise RuntimeError(
                    f"job ended {job.get('state')} (promoted={job.get('promoted', False)}): {job.get('error', '')}"
                )
            version = job["model_version"]
            metrics = job.get("metrics", {})
            print(
                f"    model {version}: accuracy {metrics.get('accuracy', 0):.3f}, F1 {metrics.get('f1', 0):.3f}"
            )
            wait_model(stack, model_addr, version)
            print(f"    model_svc serves {version}")
            summary.update(
                model_version=version, metrics=metrics, train_addr=train_addr, model_addr=model_addr
            )

        replay = demo_dir / "replay.jsonl"
        with step(
            4, f"stream_svc on a replay of {cfg['tweets']} unseen tweets -> DynamoDB", LOGS / "stream_svc.log"
        ):
            write_jsonl(replay, cfg["tweets"], seed=99)
            dead_letter = demo_dir / "dead-letter.jsonl"
            dead_letter.unlink(missing_ok=True)
            stack.start(
                "stream_svc",
                "stream_svc",
                {
                    "SOURCE": "replay",
                    "REPLAY_PATH": str(replay),
                    "MODEL_TARGET": f"dns:///{model_addr}",
                    "DYNAMODB_TABLE": cfg["table"],
                    "DEAD_LETTER_PATH": str(dead_letter),
                },
            )
            code = stack.procs["stream_svc"].wait(timeout=600)
            if code != 0:
                raise RuntimeError(f"stream_svc exited with {code}")
            items = count_items(cfg["table"])
            print(f"    {items} items in {cfg['table']}")
            summary.update(items=items, tweets=cfg["tweets"], dead_lettered=count_lines(dead_letter))

        chart = demo_dir / "sentiment.png"
        with step(5, "report"):
            figures = demo_dir / "report.json"
            subprocess.run(
                [sys.executable, "-m", "stream_svc", "report", "--plot", str(chart), "--json", str(figures)],
                cwd=ROOT,
                env={**env, "DYNAMODB_TABLE": cfg["table"]},
                check=True,
            )
            report = json.loads(figures.read_text())
            print(f"    chart: {shown(chart)}")
            summary.update(report=report, chart=str(chart))

        (demo_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if up:
            state = {
                "pids": {name: proc.pid for name, proc in stack.procs.items() if proc.poll() is None},
                "aws_pid": aws._proc.pid if aws and aws._proc else None,
                "env": {k: v for k, v in env.items() if k.startswith("AWS_")},
                **{k: summary[k] for k in ("train_addr", "model_addr", "model_version")},
            }
            STATE.write_text(json.dumps(state, indent=2))
            say(f"stack left running: train_svc {train_addr}, model_svc {model_addr}; `make down` stops it")
            for key, value in state["env"].items():
                print(f"    export {key}={value}")
            return summary
    except BaseException:
        stack.stop()
        if aws:
            aws.stop()
        raise
    with step(6, "stopping everything (logs kept under var/logs)"):
        stack.stop()
        if aws:
            aws.stop()
    return summary


def follow_job(address: str, job_id: str) -> dict[str, Any]:
    """Follow WatchJob with grpcurl, printing each stage/epoch; returns the final job."""
    command = [
        GRPCURL,
        "-plaintext",
        "-d",
        json.dumps({"job_id": job_id}),
        address,
        "sentiment.v1.TrainService/WatchJob",
    ]
    last: dict[str, Any] = {}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        buffer = ""
        for line in proc.stdout:
            buffer += line
            if line.rstrip() != "}":
                continue
            last = json.loads(buffer)
            buffer = ""
            epoch = (
                f" epoch {last.get('epoch', 0)}/{last.get('epochs', 0)}" if last.get("stage") == "fit" else ""
            )
            acc = f" val_accuracy {last['accuracy']:.3f}" if "accuracy" in last else ""
            print(f"    {last.get('state', '?')} {last.get('stage', '')}{epoch}{acc}", flush=True)
    return last


def wait_model(stack: Stack, address: str, version: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stack.procs["model_svc"].poll() is not None:
            raise RuntimeError("model_svc exited; read var/logs/model_svc.log")
        try:
            if (
                json.loads(grpcurl(address, "sentiment.v1.PredictService/GetModel", {}, max_time_s=5)).get(
                    "version"
                )
                == version
            ):
                return
        except (RuntimeError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(
        f"model_svc did not load {version} within {timeout_s:.0f}s; read var/logs/model_svc.log"
    )


def count_items(table: str) -> int:
    paginator = boto3.client("dynamodb").get_paginator("scan")
    return sum(page["Count"] for page in paginator.paginate(TableName=table, Select="COUNT"))


def count_lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


def down() -> None:
    if not STATE.exists():
        say("nothing running (no var/stack.json)")
        return
    state = json.loads(STATE.read_text())
    pids = [*state["pids"].values(), state.get("aws_pid")]
    for pid in filter(None, pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 20
    for pid in filter(None, pids):
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    STATE.unlink()
    say("stack stopped")


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

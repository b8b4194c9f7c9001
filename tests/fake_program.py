"""A stand-in server for the tests of scripts/programs.py: `python -m tests.fake_program`, no TensorFlow.

Binds LISTEN_ADDR, logs `fake serving on <addr> (port N)` as train_svc does, reports SERVING on grpc.health
after FAKE_SERVE_AFTER_S, and stops on SIGTERM (logging `fake stopped`). FAKE_EXIT_CODE=N exits at once with
N; FAKE_IGNORE_SIGTERM=1 ignores SIGTERM, so only a kill stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sentiment.rpc import wait_for_signal


async def serve() -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = os.environ["LISTEN_ADDR"]
    port = server.add_insecure_port(address)
    await server.start()
    print(f"fake serving on {address} (port {port})", file=sys.stderr, flush=True)
    await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await asyncio.sleep(float(os.environ.get("FAKE_SERVE_AFTER_S", "0")))
    if os.environ.get("FAKE_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signalled: asyncio.Future[object] = asyncio.get_running_loop().create_future()  # never
    else:
        signalled = asyncio.ensure_future(wait_for_signal())
        await asyncio.sleep(0)  # the handlers are in place before anyone sees SERVING
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await signalled
    await server.stop(0)
    print("fake stopped", file=sys.stderr, flush=True)


def main() -> int:
    if code := os.environ.get("FAKE_EXIT_CODE"):
        print(f"fake exiting with {code}", file=sys.stderr, flush=True)
        return int(code)
    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())

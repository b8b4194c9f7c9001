"""PredictClient: its interface, retries through a server restart, status codes as domain errors, TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scripts.local_aws import free_port
from sentiment import errors
from sentiment.predict_client import (
    DEFAULT_CONNECTIONS,
    ERROR_FOR,
    PredictClient,
    PredictFailed,
    Prediction,
    RetryPolicy,
    domain_error,
)
from sentiment.rpc import STATUS_FOR, status_for
from sentiment.synthetic import CLEARLY_NEGATIVE, CLEARLY_POSITIVE

FAST_RETRY = RetryPolicy(attempts=12, initial_backoff_s=0.05, max_backoff_s=0.5)


async def test_predict_batch_and_predict(model_server: Any) -> None:
    async with PredictClient(f"dns:///127.0.0.1:{model_server.port}") as client:
        results = await client.predict_batch([CLEARLY_POSITIVE[1], CLEARLY_NEGATIVE[1]])
        single = await client.predict(CLEARLY_POSITIVE[1])
    assert all(isinstance(r, Prediction) for r in results)
    assert results[0].score > 0.5 > results[1].score
    assert results[1].label in ("NEGATIVE", "NEUTRAL") and results[0].model_version == "v1"
    assert single == results[0]


def established_to(port: int) -> int:
    """TCP connections established to `port` on this machine (the server's side of each)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            count += int(local.rsplit(":", 1)[1], 16) == port and state == "01"
    return count


async def test_calls_take_the_connections_in_turn_four_unless_told(model_server: Any) -> None:
    """A pod's WORKERS split its connections: a client of 3 connections holds 3 to one server, and
    spreads its calls over them; a client told nothing holds DEFAULT_CONNECTIONS (one would leave all but
    one of a pod's workers idle for every caller that kept the default)."""
    assert DEFAULT_CONNECTIONS >= 4
    for held, told in ((3, {"connections": 3}), (DEFAULT_CONNECTIONS, {})):
        before = established_to(model_server.port)
        async with PredictClient(f"127.0.0.1:{model_server.port}", **told) as client:
            for _ in range(2):
                results = await asyncio.gather(*(client.predict(CLEARLY_POSITIVE[1]) for _ in range(held)))
                assert len(set(results)) == 1
            assert established_to(model_server.port) - before == held
    with pytest.raises(ValueError, match="connections"):
        PredictClient("127.0.0.1:1", connections=0)


async def test_invalid_argument_is_not_retried_and_raises_invalid_input(model_server: Any) -> None:
    async with PredictClient(f"127.0.0.1:{model_server.port}", retry=FAST_RETRY) as client:
        with pytest.raises(errors.InvalidInput) as caught:
            await client.predict_batch(["fine", ""])
    message = str(caught.value)
    assert message.startswith("INVALID_ARGUMENT: ") and len(message) > len("INVALID_ARGUMENT: ")
    assert isinstance(caught.value.__cause__, grpc.aio.AioRpcError)  # the status, for a traceback
    assert client.retries == 0


def test_every_status_code_maps_back_to_the_domain_error_that_stands_for_it() -> None:
    assert ERROR_FOR[grpc.StatusCode.INVALID_ARGUMENT] is errors.InvalidInput
    assert ERROR_FOR[grpc.StatusCode.UNAVAILABLE] is errors.ModelNotReady
    assert ERROR_FOR[grpc.StatusCode.RESOURCE_EXHAUSTED] is errors.Overloaded
    assert ERROR_FOR[grpc.StatusCode.DEADLINE_EXCEEDED] is errors.DeadlineExpired
    assert ERROR_FOR[grpc.StatusCode.NOT_FOUND] is errors.NotFound
    assert ERROR_FOR[grpc.StatusCode.FAILED_PRECONDITION] is errors.FailedPrecondition
    for code in set(STATUS_FOR.values()):  # the inverse: the server would answer the error with its code
        error = domain_error(code, "details")
        assert status_for(error) == code and str(error) == f"{code.name}: details"
    unknown = domain_error(grpc.StatusCode.INTERNAL, "internal error; see the server log")
    assert type(unknown) is PredictFailed and isinstance(unknown, errors.SentimentError)
    assert str(unknown) == "INTERNAL: internal error; see the server log"


def test_predict_backoff_is_full_jitter_with_the_policy_multiplier() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=2.0, multiplier=3.0)
    for attempt in range(1, 8):
        assert all(0 <= policy.backoff_s(attempt) <= min(2.0, 0.1 * 3 ** (attempt - 1)) for _ in range(20))


async def test_retries_spent_raise_the_domain_error() -> None:
    retry = RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
    async with PredictClient(f"127.0.0.1:{free_port()}", timeout_s=0.2, retry=retry) as client:
        with pytest.raises(errors.SentimentError) as caught:
            await client.predict_batch(["nobody listens"])
    # The first try fails fast (UNAVAILABLE); the retries wait for the channel until their deadline.
    assert type(caught.value) in (errors.ModelNotReady, errors.DeadlineExpired), caught.value
    assert client.retries == 2


async def test_the_client_retries_through_a_server_restart(
    model_store: Path, start_model_server: Callable[..., Any]
) -> None:
    first = await start_model_server(model_store)
    port = first.port
    async with PredictClient(f"dns:///127.0.0.1:{port}", timeout_s=5, retry=FAST_RETRY) as client:
        assert (await client.predict("before the restart")).model_version == "v1"
        await first.stop(0)
        call = asyncio.ensure_future(client.predict_batch(["during the restart", "still there"]))
        done, _ = await asyncio.wait([call], timeout=0.3)
        assert not done, "no server: the call is retrying"
        await start_model_server(model_store, listen_addr=f"127.0.0.1:{port}")
        results = await asyncio.wait_for(call, 30)
    assert [r.model_version for r in results] == ["v1", "v1"]
    assert client.retries >= 1


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost / 127.0.0.1, generated now; returns (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_tls(model_store: Path, tmp_path: Path, start_model_server: Callable[..., Any]) -> None:
    cert, key = self_signed_certificate(tmp_path)
    server = await start_model_server(model_store, tls_cert_path=str(cert), tls_key_path=str(key))
    async with PredictClient(f"localhost:{server.port}", root_certificates=cert.read_bytes()) as client:
        (result,) = await client.predict_batch([CLEARLY_NEGATIVE[1]])
    assert result.model_version == "v1" and result.score < 0.5
    no_retry = RetryPolicy(attempts=1)
    async with PredictClient(f"127.0.0.1:{server.port}", timeout_s=2, retry=no_retry) as plaintext:
        with pytest.raises(errors.ModelNotReady) as caught:
            await plaintext.predict("plaintext to a TLS port")
    assert str(caught.value).startswith("UNAVAILABLE: ")

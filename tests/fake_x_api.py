"""A fake X API v2 filtered stream on loopback (aiohttp): the rules endpoints and the stream itself.

- `GET/POST /2/tweets/search/stream/rules`: list, add, delete rules with X's v2 JSON shapes.
- `GET /2/tweets/search/stream`: newline-delimited JSON with `\\r\\n`, keep-alive blank lines, the
  messages given (dicts are sent as JSON, bytes/str as they are, so malformed payloads can be sent).
- `drop_after={i, ...}`: after sending message i the connection is cut (once per index); the next
  connection resumes `resend` messages before where the cut one left off, so the client sees some
  tweets twice (as X's backfill does) and the test checks idempotency by id.
- `hold()` / `release()` pause and resume the sending (keep-alives go on meanwhile); `hold_after={i}`
  holds by itself once message i is sent.
- `refuse_stream=401` (or 403) answers every stream connect with that status and X's problem JSON (a
  rejected token; an app not enrolled for the filtered stream) while the rules endpoints still answer;
  `refused` counts those answers. A wrong bearer token gets 401 from every endpoint.
- `answer_first=[429, 429]` answers the first stream connects with those statuses (X's rate limit), then
  streams as usual.
- `stall()` / `unstall()`: while stalled the open stream sends nothing at all, not even keep-alives (a
  stream X has silently stopped feeding).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

STREAM_PATH = "/2/tweets/search/stream"
RULES_PATH = "/2/tweets/search/stream/rules"
# X's answers, as its v2 API words them.
PROBLEMS: dict[int, dict[str, Any]] = {
    401: {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"},
    403: {
        "client_id": "12345678",
        "detail": "When authenticating requests to the Twitter API v2 endpoints, you must use keys and tokens "
        "from a Twitter developer App that is attached to a Project.",
        "registration_url": "https://developer.twitter.com/en/docs/projects/overview",
        "title": "Client Forbidden",
        "required_enrollment": "Appropriate Level of API Access",
        "reason": "client-not-enrolled",
        "type": "https://api.twitter.com/2/problems/client-forbidden",
    },
}


def _sent() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeXApi:
    def __init__(
        self,
        messages: Iterable[dict[str, Any] | bytes | str] = (),
        bearer_token: str = "test-token",
        rules: Iterable[str] = (),
        drop_after: Iterable[int] = (),
        hold_after: Iterable[int] = (),
        resend: int = 2,
        keepalive_s: float = 0.2,
        keepalive_every: int = 7,
        refuse_stream: int = 0,
        answer_first: Iterable[int] = (),
    ) -> None:
        self.messages: list[bytes] = [self._encode(m) for m in messages]
        self.bearer_token = bearer_token
        self._rule_ids = itertools.count(1_500_000_000_000_000_001)
        self.rules: dict[str, dict[str, str]] = {}
        for value in rules:
            rule_id = str(next(self._rule_ids))
            self.rules[rule_id] = {"id": rule_id, "value": value}
        self.drop_after = set(drop_after)
        self.hold_after = set(hold_after)
        self.resend = resend
        self.keepalive_s = keepalive_s
        self.keepalive_every = keepalive_every
        self.refuse_stream = refuse_stream
        self.answer_first = list(answer_first)
        self.stalled = asyncio.Event()
        self.refused = 0
        self.cursor = 0  # index of the next message to send
        self.sent = 0  # messages written, resends included
        self.connections = 0
        self.drops = 0
        self.stream_queries: list[dict[str, str]] = []
        self.rule_requests: list[tuple[str, Any]] = []
        self._open = asyncio.Event()
        self._open.set()
        self._progress = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    @staticmethod
    def _encode(message: dict[str, Any] | bytes | str) -> bytes:
        if isinstance(message, dict):
            return json.dumps(message, ensure_ascii=False).encode()
        return message.encode() if isinstance(message, str) else message

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get(RULES_PATH, self._get_rules)
        app.router.add_post(RULES_PATH, self._post_rules)
        app.router.add_get(STREAM_PATH, self._stream)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def wait_sent(self, cursor: int, timeout_s: float = 30.0) -> None:
        """Until messages up to index `cursor` (exclusive) have been sent at least once."""
        async with asyncio.timeout(timeout_s), self._progress:
            await self._progress.wait_for(lambda: self.cursor >= cursor)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.bearer_token}"

    @staticmethod
    def _unauthorized() -> web.Response:
        return web.json_response(PROBLEMS[401], status=401)

    async def _get_rules(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        self.rule_requests.append(("list", None))
        body: dict[str, Any] = {"meta": {"sent": _sent(), "result_count": len(self.rules)}}
        if self.rules:
            body["data"] = list(self.rules.values())
        return web.json_response(body)

    async def _post_rules(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        payload = await request.json()
        if "add" in payload:
            self.rule_requests.append(("add", payload["add"]))
            created = []
            for rule in payload["add"]:
                rule_id = str(next(self._rule_ids))
                entry = {
                    "id": rule_id,
                    "value": rule["value"],
                    **({"tag": rule["tag"]} if "tag" in rule else {}),
                }
                self.rules[rule_id] = entry
                created.append(entry)
            summary = {"created": len(created), "not_created": 0, "valid": len(created), "invalid": 0}
            return web.json_response(
                {"data": created, "meta": {"sent": _sent(), "summary": summary}}, status=201
            )
        if "delete" in payload:
            ids = [str(i) for i in payload["delete"].get("ids", [])]
            self.rule_requests.append(("delete", ids))
            deleted = [i for i in ids if self.rules.pop(i, None) is not None]
            summary = {"deleted": len(deleted), "not_deleted": len(ids) - len(deleted)}
            return web.json_response({"meta": {"sent": _sent(), "summary": summary}})
        body = {"title": "Invalid Request", "detail": "add or delete required", "type": "about:blank"}
        return web.json_response(body, status=400)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            self.refused += 1
            return self._unauthorized()
        if self.refuse_stream:
            self.refused += 1
            return web.json_response(PROBLEMS[self.refuse_stream], status=self.refuse_stream)
        if self.answer_first:
            self.refused += 1
            status = self.answer_first.pop(0)
            body = {
                "title": "Too Many Requests",
                "detail": "Too Many Requests",
                "type": "about:blank",
                "status": status,
            }
            return web.json_response(PROBLEMS.get(status, body), status=status)
        self.connections += 1
        self.stream_queries.append(dict(request.query))
        response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
        await response.prepare(request)
        await response.write(b"\r\n")  # X opens with a keep-alive
        index = max(0, self.cursor - self.resend) if self.connections > 1 else self.cursor
        try:
            await self._send_from(request, response, index)
        except ConnectionResetError:  # the client went away
            pass
        return response

    def stall(self) -> None:
        self.stalled.set()

    def unstall(self) -> None:
        self.stalled.clear()

    async def _send_from(self, request: web.Request, response: web.StreamResponse, index: int) -> None:
        while True:
            if self.stalled.is_set():
                await asyncio.sleep(self.keepalive_s)
                continue
            if index >= len(self.messages) or not self._open.is_set():
                try:
                    async with asyncio.timeout(self.keepalive_s):
                        await self._open.wait()
                        if index >= len(self.messages):
                            await asyncio.sleep(self.keepalive_s)
                except TimeoutError:
                    pass
                await response.write(b"\r\n")
                continue
            await response.write(self.messages[index] + b"\r\n")
            if self.keepalive_every and index % self.keepalive_every == 0:
                await response.write(b"\r\n")
            self.sent += 1
            async with self._progress:
                self.cursor = max(self.cursor, index + 1)
                self._progress.notify_all()
            if index in self.hold_after:
                self.hold_after.discard(index)
                self.hold()
            if index in self.drop_after:
                self.drop_after.discard(index)
                self.drops += 1
                await asyncio.sleep(0.05)  # let the bytes reach the client before the cut
                assert request.transport is not None
                request.transport.abort()
                return
            index += 1

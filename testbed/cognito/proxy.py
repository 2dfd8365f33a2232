#!/usr/bin/env python3
"""A programmable proxy in front of moto's Cognito Identity emulator.

moto alone is not Cognito: it hands every identity the same keys, a fixed 90 s
lifetime, identity ids for pools whose guest access is off, and HTTP 500 HTML
for unknown pools. This proxy sits between the controller and moto, forwards
what it is told to forward, and lets tests change what Cognito "says":

* Cognito's real JSON errors (``__type`` + ``message``, ``x-amzn-ErrorType``)
  with the right HTTP status;
* latency, dropped connections and TCP resets;
* per-operation request-rate quotas (token buckets, AWS's TooManyRequests);
* credentials unique per call and a chosen lifetime;
* Cognito's semantics that moto lacks (unknown pool, guest access off,
  deleted identity), switched on per rule;
* exact call counts per operation, per identity pool and per identity.

With no rules, it only forwards and counts.

Everything is controlled over HTTP under ``/_proxy/`` on the same port (see
``README.md`` beside this file). It uses only the standard library, plus boto3
for the pool helpers.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import socket
import string
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

TARGET_PREFIX = "AWSCognitoIdentityService."

# Cognito's own words for the errors the tests need, with their HTTP status.
ERRORS: dict[str, tuple[int, str]] = {
    "NotAuthorizedException": (400, "Unauthenticated access is not supported for this identity pool."),
    "ResourceNotFoundException": (400, "IdentityPool not found."),
    "TooManyRequestsException": (400, "Rate exceeded"),
    "InvalidIdentityPoolConfigurationException": (
        400,
        "Invalid identity pool configuration. Check assigned IAM roles for this pool.",
    ),
    "InternalErrorException": (500, "An internal error occurred."),
    "LimitExceededException": (400, "Limit exceeded."),
    "InvalidParameterException": (400, "Invalid parameter."),
    "ResourceConflictException": (400, "Resource conflict."),
    "ExternalServiceException": (400, "External service error."),
}

RULE_KEYS = {
    "pool",
    "operation",
    "times",
    "delay_ms",
    "error",
    "message",
    "status",
    "http_status",
    "body",
    "connection",
    "unique_credentials",
    "lifetime_seconds",
    "rate_per_second",
    "burst",
    "semantics",
}


def _rand(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


class Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` stored."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Rule:
    def __init__(self, rid: int, spec: dict[str, Any]) -> None:
        unknown = set(spec) - RULE_KEYS
        if unknown:
            raise ValueError(f"unknown rule keys: {sorted(unknown)}")
        if "error" in spec and spec["error"] not in ERRORS:
            raise ValueError(f"unknown error type {spec['error']!r}; known: {sorted(ERRORS)}")
        if spec.get("connection") not in (None, "reset", "drop"):
            raise ValueError("connection must be 'reset' or 'drop'")
        self.id = rid
        self.spec = spec
        self.remaining: Optional[int] = spec.get("times")
        self.hits = 0
        self.bucket: Optional[Bucket] = None
        if spec.get("rate_per_second") is not None:
            rate = float(spec["rate_per_second"])
            self.bucket = Bucket(rate, float(spec.get("burst") or max(1.0, rate)))

    def matches(self, operation: str, pool: Optional[str]) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        op = self.spec.get("operation")
        if op is not None and op != operation:
            return False
        want_pool = self.spec.get("pool")
        if want_pool is not None and want_pool != pool:
            return False
        return True

    def is_fault(self) -> bool:
        return any(k in self.spec for k in ("error", "http_status", "connection"))

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "hits": self.hits, "remaining": self.remaining, **self.spec}


class State:
    """Rules, counters and what the proxy has learned, behind one lock."""

    def __init__(self, upstream: str) -> None:
        self.lock = threading.Lock()
        self.upstream = upstream
        self.reset()

    def reset(self) -> None:
        self.rules: list[Rule] = []
        self.next_id = 1
        self.calls: dict[str, int] = {}
        self.by_pool: dict[str, dict[str, int]] = {}
        self.by_identity: dict[str, dict[str, int]] = {}
        self.outcomes: dict[str, dict[str, int]] = {}
        self.identity_pool: dict[str, str] = {}
        self.deleted_identities: set[str] = set()
        self.issued: list[dict[str, str]] = []

    def count(self, operation: str, pool: Optional[str], identity: Optional[str]) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        if pool:
            p = self.by_pool.setdefault(pool, {})
            p[operation] = p.get(operation, 0) + 1
        if identity:
            i = self.by_identity.setdefault(identity, {})
            i[operation] = i.get(operation, 0) + 1

    def outcome(self, operation: str, what: str) -> None:
        o = self.outcomes.setdefault(operation, {})
        o[what] = o.get(what, 0) + 1


STATE: State


def region_of(pool_or_identity: Optional[str]) -> str:
    if pool_or_identity and ":" in pool_or_identity:
        return pool_or_identity.split(":", 1)[0]
    return os.environ.get("AWS_REGION", "us-east-1")


def moto_call(target: str, payload: dict[str, Any], region: str) -> tuple[int, dict[str, Any]]:
    """Calls moto directly with a dummy SigV4 header so it picks the region."""
    u = urllib.parse.urlsplit(STATE.upstream)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/",
            body=json.dumps(payload),
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": TARGET_PREFIX + target,
                "Authorization": dummy_auth(region),
            },
        )
        resp = conn.getresponse()
        raw = resp.read()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"raw": raw.decode("utf-8", "replace")}
        return resp.status, body
    finally:
        conn.close()


def dummy_auth(region: str) -> str:
    return (
        f"AWS4-HMAC-SHA256 Credential=testbed/20260101/{region}/cognito-identity/aws4_request, "
        "SignedHeaders=host, Signature=0"
    )


def fresh_credentials() -> dict[str, str]:
    return {
        "AccessKeyId": "ASIA" + _rand(string.ascii_uppercase + string.digits, 16),
        "SecretKey": _rand(string.ascii_letters + string.digits + "+/", 40),
        "SessionToken": base64.b64encode(secrets.token_bytes(96)).decode(),
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cognito-testbed-proxy"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet by default
        if os.environ.get("PROXY_VERBOSE"):
            super().log_message(fmt, *args)

    # ----- plumbing -------------------------------------------------------
    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes, headers: Optional[dict[str, str]] = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _aws_error(self, error: str, message: Optional[str] = None, status: Optional[int] = None) -> None:
        default_status, default_message = ERRORS[error]
        body = json.dumps({"__type": error, "message": message or default_message}).encode()
        self._send(
            status or default_status,
            body,
            {
                "Content-Type": "application/x-amz-json-1.1",
                "x-amzn-ErrorType": f"{error}:",
                "x-amzn-RequestId": secrets.token_hex(16),
            },
        )

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send a TCP RST.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _drop(self) -> None:
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    # ----- routing --------------------------------------------------------
    def do_GET(self) -> None:
        self._control("GET")

    def do_DELETE(self) -> None:
        self._control("DELETE")

    def do_PUT(self) -> None:
        self._control("PUT")

    def do_POST(self) -> None:
        if self.path.startswith("/_proxy/"):
            self._control("POST")
        else:
            self._cognito()

    # ----- the Cognito path -----------------------------------------------
    def _cognito(self) -> None:
        raw = self._body()
        target = self.headers.get("X-Amz-Target", "")
        operation = target[len(TARGET_PREFIX):] if target.startswith(TARGET_PREFIX) else target or "Unknown"
        try:
            payload = json.loads(raw or b"{}")
        except ValueError:
            payload = {}
        identity = payload.get("IdentityId")
        with STATE.lock:
            pool = payload.get("IdentityPoolId") or STATE.identity_pool.get(identity or "")
            STATE.count(operation, pool, identity)
            matching = [r for r in STATE.rules if r.matches(operation, pool)]
            delay_ms = sum(int(r.spec.get("delay_ms") or 0) for r in matching)
            throttled = False
            for r in matching:
                if r.bucket is not None:
                    r.hits += 1
                    if not r.bucket.take():
                        throttled = True
            fault = next((r for r in matching if r.is_fault()), None)
            if fault is not None:
                fault.hits += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
            for r in matching:
                if r is not fault and r.bucket is None and r.remaining is not None and not r.is_fault():
                    r.remaining -= 1
                    r.hits += 1
            unique = any(r.spec.get("unique_credentials") for r in matching)
            lifetimes = [r.spec["lifetime_seconds"] for r in matching if r.spec.get("lifetime_seconds") is not None]
            semantics = any(r.spec.get("semantics") for r in matching)
            deleted = identity in STATE.deleted_identities

        if delay_ms:
            time.sleep(delay_ms / 1000.0)
        if throttled:
            with STATE.lock:
                STATE.outcome(operation, "TooManyRequestsException")
            return self._aws_error("TooManyRequestsException")
        if fault is not None:
            spec = fault.spec
            with STATE.lock:
                STATE.outcome(operation, spec.get("error") or spec.get("connection") or f"http{spec.get('http_status')}")
            if spec.get("connection") == "reset":
                return self._reset()
            if spec.get("connection") == "drop":
                return self._drop()
            if spec.get("error"):
                return self._aws_error(spec["error"], spec.get("message"), spec.get("status"))
            return self._send(
                int(spec["http_status"]),
                str(spec.get("body") or "<html><body>Service Unavailable</body></html>").encode(),
                {"Content-Type": "text/html"},
            )

        if semantics:
            refusal = self._semantic_refusal(operation, pool, identity, deleted)
            if refusal is not None:
                with STATE.lock:
                    STATE.outcome(operation, refusal[0])
                return self._aws_error(*refusal)

        self._forward(raw, operation, pool, unique, lifetimes[-1] if lifetimes else None)

    def _semantic_refusal(
        self, operation: str, pool: Optional[str], identity: Optional[str], deleted: bool
    ) -> Optional[tuple[str, str]]:
        """What real Cognito would refuse that moto lets through."""
        if operation == "GetCredentialsForIdentity" and deleted:
            return ("ResourceNotFoundException", f"Identity '{identity}' not found.")
        if operation not in ("GetId", "GetCredentialsForIdentity") or not pool:
            return None
        status, desc = moto_call("DescribeIdentityPool", {"IdentityPoolId": pool}, region_of(pool))
        if status != 200:
            if operation == "GetId":
                return ("ResourceNotFoundException", f"IdentityPool '{pool}' not found.")
            return ("ResourceNotFoundException", f"Identity '{identity}' not found.")
        if not desc.get("AllowUnauthenticatedIdentities"):
            return ("NotAuthorizedException", ERRORS["NotAuthorizedException"][1])
        return None

    def _forward(
        self, raw: bytes, operation: str, pool: Optional[str], unique: bool, lifetime: Optional[int]
    ) -> None:
        u = urllib.parse.urlsplit(STATE.upstream)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        if "Authorization" not in self.headers:
            # Unsigned (public) calls carry no region; moto needs one to pick its backend.
            headers["Authorization"] = dummy_auth(region_of(pool))
        try:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
            conn.request("POST", self.path, body=raw, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            status = resp.status
            resp_headers = {k: v for k, v in resp.getheaders() if k.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server")}
            conn.close()
        except OSError as e:
            with STATE.lock:
                STATE.outcome(operation, "upstream-unreachable")
            return self._send(502, f"upstream unreachable: {e}".encode(), {"Content-Type": "text/plain"})

        if status == 200:
            try:
                obj = json.loads(body)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                if operation == "GetId" and obj.get("IdentityId") and pool:
                    with STATE.lock:
                        STATE.identity_pool[obj["IdentityId"]] = pool
                creds = obj.get("Credentials")
                if isinstance(creds, dict):
                    if unique:
                        creds.update(fresh_credentials())
                    if lifetime is not None:
                        creds["Expiration"] = int(time.time()) + int(lifetime)
                    with STATE.lock:
                        if len(STATE.issued) < 200_000:
                            STATE.issued.append(
                                {k: creds[k] for k in ("AccessKeyId", "SecretKey", "SessionToken") if k in creds}
                            )
                    body = json.dumps(obj).encode()
        with STATE.lock:
            STATE.outcome(operation, "ok" if status == 200 else f"upstream{status}")
        self._send(status, body, resp_headers)

    # ----- the control API ------------------------------------------------
    def _control(self, method: str) -> None:
        path = urllib.parse.urlsplit(self.path).path
        raw = self._body() if method in ("POST", "PUT") else b""
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            return self._json(400, {"error": "body is not JSON"})
        try:
            self._route(method, path, data)
        except ValueError as e:
            self._json(400, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - a test bed must say what went wrong
            self._json(500, {"error": f"{type(e).__name__}: {e}"})

    def _route(self, method: str, path: str, data: dict[str, Any]) -> None:
        parts = [p for p in path.split("/") if p][1:]  # drop "_proxy"
        head = parts[0] if parts else ""
        if method == "GET" and head == "health":
            return self._json(200, {"ok": True})
        if method == "GET" and head == "calls":
            with STATE.lock:
                return self._json(
                    200,
                    {
                        "operations": STATE.calls,
                        "pools": STATE.by_pool,
                        "identities": STATE.by_identity,
                        "outcomes": STATE.outcomes,
                    },
                )
        if method == "GET" and head == "issued":
            with STATE.lock:
                return self._json(200, {"credentials": STATE.issued})
        if method == "POST" and head == "reset":
            with STATE.lock:
                STATE.reset()
            return self._json(200, {"ok": True})
        if head == "rules":
            return self._rules(method, parts[1:], data)
        if head == "pools":
            return self._pools(method, parts[1:], data)
        if head == "identities" and method == "DELETE" and len(parts) == 2:
            with STATE.lock:
                STATE.deleted_identities.add(parts[1])
            return self._json(200, {"deleted": parts[1]})
        self._json(404, {"error": f"no route {method} {path}"})

    def _rules(self, method: str, rest: list[str], data: dict[str, Any]) -> None:
        with STATE.lock:
            if method == "GET":
                return self._json(200, {"rules": [r.view() for r in STATE.rules]})
            if method == "POST":
                rule = Rule(STATE.next_id, data)
                STATE.next_id += 1
                STATE.rules.append(rule)
                return self._json(200, rule.view())
            if method == "DELETE":
                if rest:
                    rid = int(rest[0])
                    before = len(STATE.rules)
                    STATE.rules = [r for r in STATE.rules if r.id != rid]
                    return self._json(200 if len(STATE.rules) < before else 404, {"deleted": rid})
                pool = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("pool", [None])[0]
                STATE.rules = [r for r in STATE.rules if pool is not None and r.spec.get("pool") != pool]
                return self._json(200, {"rules": len(STATE.rules)})
        self._json(405, {"error": "method not allowed"})

    def _pools(self, method: str, rest: list[str], data: dict[str, Any]) -> None:
        if method == "POST" and not rest:
            region = data.get("region") or os.environ.get("AWS_REGION", "us-east-1")
            status, body = moto_call(
                "CreateIdentityPool",
                {
                    "IdentityPoolName": data.get("name") or f"testbed_{secrets.token_hex(4)}",
                    "AllowUnauthenticatedIdentities": bool(data.get("guest", True)),
                },
                region,
            )
            return self._json(status, body)
        if len(rest) == 1:
            pool = rest[0]
            if method == "GET":
                status, body = moto_call("DescribeIdentityPool", {"IdentityPoolId": pool}, region_of(pool))
                return self._json(status, body)
            if method == "DELETE":
                status, body = moto_call("DeleteIdentityPool", {"IdentityPoolId": pool}, region_of(pool))
                return self._json(status, body)
            if method == "PUT":
                status, desc = moto_call("DescribeIdentityPool", {"IdentityPoolId": pool}, region_of(pool))
                if status != 200:
                    return self._json(status, desc)
                desc["AllowUnauthenticatedIdentities"] = bool(data.get("guest", desc["AllowUnauthenticatedIdentities"]))
                status, body = moto_call("UpdateIdentityPool", desc, region_of(pool))
                return self._json(status, body)
        self._json(404, {"error": "no such pools route"})


def main() -> int:
    global STATE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:0", help="host:port (loopback)")
    ap.add_argument("--upstream", required=True, help="moto's URL, e.g. http://127.0.0.1:5000")
    ap.add_argument("--port-file", help="write the bound port here once listening")
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    STATE = State(args.upstream)
    ThreadingHTTPServer.request_queue_size = 512
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    bound = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(bound))
        os.replace(tmp, args.port_file)
    print(f"cognito proxy on http://{host}:{bound} -> {args.upstream}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

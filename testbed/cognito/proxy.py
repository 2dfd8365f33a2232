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
* exact call counts per operation, per identity pool and per identity;
* AWS STS ``GetCallerIdentity`` on the same port, for the credentials it handed
  out: it checks the key, the session token, the expiry and the SigV4
  signature, answers like STS, and records each call with how the key stood
  (current, previous, expired, unknown, bad token, bad signature);
* Cognito's basic (classic) flow: GetOpenIdToken hands out JWT-shaped tokens it
  remembers (refused, with ``semantics``, on pools without AllowClassicFlow),
  and STS ``AssumeRoleWithWebIdentity`` checks the token, the role's trust
  (registered roles: trusted pools, ``amr``) and DurationSeconds against the
  role's MaxSessionDuration, answering with fresh credentials of the requested
  lifetime that GetCallerIdentity then accepts.

With no rules, it only forwards and counts.

Everything is controlled over HTTP under ``/_proxy/`` on the same port (see
``README.md`` beside this file). It uses only the standard library, plus boto3
for the pool helpers.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import socket
import string
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

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

# STS (awsQuery protocol: form-encoded request, XML answer).
STS_VERSION = "2011-06-15"
STS_XMLNS = f"https://sts.amazonaws.com/doc/{STS_VERSION}/"
STS_OPERATIONS = {"GetCallerIdentity", "AssumeRoleWithWebIdentity"}
# moto's account; identity pools' default unauthenticated roles live in it.
ACCOUNT_ID = os.environ.get("MOTO_ACCOUNT_ID", "123456789012")
# The role session name Cognito gives the credentials it hands out.
COGNITO_SESSION = "CognitoIdentityCredentials"
# The basic flow: Cognito's words when the pool does not allow it (GetOpenIdToken
# answers InvalidParameterException, as aws/aws-cli#7652 shows), how long its OpenID
# tokens last, STS's bounds on DurationSeconds, and IAM's default MaxSessionDuration.
CLASSIC_FLOW_OFF = "Basic (classic) flow is not enabled, please use enhanced flow."
OPEN_ID_TOKEN_SECONDS = 600
STS_DURATION_RANGE = (900, 43200)
DEFAULT_MAX_SESSION_SECONDS = 3600
ROLE_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")

# STS's own words for its errors: HTTP status, fault type, message.
STS_ERRORS: dict[str, tuple[int, str, str]] = {
    "ExpiredToken": (403, "Sender", "The security token included in the request is expired"),
    "InvalidClientTokenId": (403, "Sender", "The security token included in the request is invalid."),
    "SignatureDoesNotMatch": (
        403,
        "Sender",
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
    ),
    "IncompleteSignature": (400, "Sender", "The request signature does not conform to AWS standards."),
    "MissingAuthenticationToken": (403, "Sender", "Request is missing Authentication Token"),
    "AccessDenied": (403, "Sender", "Access denied"),
    "ValidationError": (400, "Sender", "1 validation error detected"),
    "InvalidIdentityToken": (
        400,
        "Sender",
        "Couldn't retrieve verification key from your identity provider, "
        "please reference AssumeRoleWithWebIdentity documentation for requirements",
    ),
    "ExpiredTokenException": (400, "Sender", "Token expired"),
    "IDPCommunicationError": (400, "Sender", "The identity provider could not be reached"),
    "Throttling": (400, "Sender", "Rate exceeded"),
    "InvalidAction": (400, "Sender", "Could not find operation for version 2011-06-15"),
    "InternalFailure": (500, "Receiver", "An internal error occurred."),
    "ServiceUnavailable": (503, "Receiver", "Service is unavailable."),
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
        if "error" in spec and spec["error"] not in ERRORS and spec["error"] not in STS_ERRORS:
            raise ValueError(f"unknown error type {spec['error']!r}; known: {sorted(ERRORS) + sorted(STS_ERRORS)}")
        if spec.get("connection") not in (None, "reset", "drop"):
            raise ValueError("connection must be 'reset' or 'drop'")
        self.id = rid
        self.spec = spec
        self.remaining: int | None = spec.get("times")
        self.hits = 0
        self.bucket: Bucket | None = None
        if spec.get("rate_per_second") is not None:
            rate = float(spec["rate_per_second"])
            self.bucket = Bucket(rate, float(spec.get("burst") or max(1.0, rate)))

    def matches(self, operation: str, pool: str | None) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        op = self.spec.get("operation")
        if op is None and operation in STS_OPERATIONS:
            return False  # STS is another service: only rules that name its operation touch it
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
        # Pool configuration moto does not keep (it has no SetIdentityPoolRoles): the
        # unauthenticated role of each pool. Survives reset(), as the pools on moto do.
        self.pool_roles: dict[str, str] = {}
        # AllowClassicFlow of the pools the proxy created (moto ignores it); a pool it
        # did not create allows the basic flow, as AWS does for pools created without
        # the setting (aws/aws-cli#7652). Survives reset().
        self.pool_classic: dict[str, bool] = {}
        # IAM roles for AssumeRoleWithWebIdentity, by ARN: the pools their trust policy
        # names (aud), the amr it requires (None: any) and MaxSessionDuration. What
        # moto's STS does not check. Survives reset(), as IAM does.
        self.roles: dict[str, dict[str, Any]] = {}
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
        # Every credential set handed out, by access key id: identity, pool, secret,
        # token, role, issued_at, expires_at. What STS checks callers against.
        self.keys: dict[str, dict[str, Any]] = {}
        # The access key id most recently handed out to each identity.
        self.newest_key: dict[str, str] = {}
        self.sts_calls: list[dict[str, Any]] = []
        # Identities whose pool was looked up on moto and not found (asked once).
        self.unmapped_identities: set[str] = set()
        # OpenID tokens GetOpenIdToken handed out: identity, pool, expires_at.
        self.open_id_tokens: dict[str, dict[str, Any]] = {}

    def count(self, operation: str, pool: str | None, identity: str | None) -> None:
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

    def remember(
        self,
        creds: dict[str, Any],
        identity: str | None,
        pool: str | None,
        role: str | None,
        session: str = COGNITO_SESSION,
    ) -> None:
        """Keeps a credential set handed out, for STS to check callers against."""
        akid = creds.get("AccessKeyId")
        if not akid or (akid not in self.keys and len(self.keys) >= 200_000):
            return
        self.keys[akid] = {
            "identity": identity,
            "pool": pool,
            "secret": creds.get("SecretKey"),
            "token": creds.get("SessionToken"),
            "role": role,
            "session": session,
            "issued_at": time.time(),
            "expires_at": float(creds["Expiration"]) if creds.get("Expiration") is not None else None,
        }
        if identity:
            self.newest_key[identity] = akid

    def match(self, operation: str, pool: str | None) -> Matched:
        """What the rules say about one request; updates their hits. Hold the lock."""
        m = Matched()
        matching = [r for r in self.rules if r.matches(operation, pool)]
        m.delay_ms = sum(int(r.spec.get("delay_ms") or 0) for r in matching)
        for r in matching:
            if r.bucket is not None:
                r.hits += 1
                if not r.bucket.take():
                    m.throttled = True
        m.fault = next((r for r in matching if r.is_fault()), None)
        if m.fault is not None:
            m.fault.hits += 1
            if m.fault.remaining is not None:
                m.fault.remaining -= 1
        for r in matching:
            if r is not m.fault and r.bucket is None and r.remaining is not None and not r.is_fault():
                r.remaining -= 1
                r.hits += 1
        m.unique = any(r.spec.get("unique_credentials") for r in matching)
        lifetimes = [r.spec["lifetime_seconds"] for r in matching if r.spec.get("lifetime_seconds") is not None]
        m.lifetime = lifetimes[-1] if lifetimes else None
        m.semantics = any(r.spec.get("semantics") for r in matching)
        return m


class Matched:
    """The rules' verdict on one request."""

    def __init__(self) -> None:
        self.delay_ms = 0
        self.throttled = False
        self.fault: Rule | None = None
        self.unique = False
        self.lifetime: int | None = None
        self.semantics = False


STATE: State


def region_of(pool_or_identity: str | None) -> str:
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


# ----- roles ----------------------------------------------------------------
def default_unauth_role(pool_name: str) -> str:
    """The role the Cognito console creates for a pool's guests."""
    return f"arn:aws:iam::{ACCOUNT_ID}:role/Cognito_{pool_name}Unauth_Role"


def unauth_role(pool: str | None) -> str | None:
    """A pool's unauthenticated role: the one it was created with, or the default for its name."""
    if not pool:
        return None
    with STATE.lock:
        known = STATE.pool_roles.get(pool)
    if known:
        return known
    status, desc = moto_call("DescribeIdentityPool", {"IdentityPoolId": pool}, region_of(pool))
    if status != 200 or not desc.get("IdentityPoolName"):
        return None
    role = default_unauth_role(desc["IdentityPoolName"])
    with STATE.lock:
        STATE.pool_roles.setdefault(pool, role)
    return role


def pool_of_identity(identity: str) -> str | None:
    """Asks moto which pool an identity belongs to (for identities created before a restart)."""
    region = region_of(identity)
    status, listing = moto_call("ListIdentityPools", {"MaxResults": 60}, region)
    if status != 200:
        return None
    for p in listing.get("IdentityPools") or []:
        pid = p.get("IdentityPoolId")
        st, ids = moto_call("ListIdentities", {"IdentityPoolId": pid, "MaxResults": 60}, region)
        if st == 200 and any(i.get("IdentityId") == identity for i in ids.get("Identities") or []):
            return pid
    return None


def assumed_role(role_arn: str, session: str = COGNITO_SESSION) -> tuple[str, str, str]:
    """(Arn, UserId, Account) that STS reports for a session of ``role_arn`` (Cognito's
    own, or the RoleSessionName of an AssumeRoleWithWebIdentity)."""
    parts = role_arn.split(":", 5)
    account = parts[4] if len(parts) == 6 and parts[4] else ACCOUNT_ID
    name = parts[5].rsplit("/", 1)[-1] if len(parts) == 6 else role_arn
    # A role's unique id is AROA + 17 characters, stable for the role.
    role_id = "AROA" + base64.b32encode(hashlib.sha256(role_arn.encode()).digest()).decode()[:17]
    return (
        f"arn:aws:sts::{account}:assumed-role/{name}/{session}",
        f"{role_id}:{session}",
        account,
    )


# ----- SigV4 ----------------------------------------------------------------
_AUTH_PARAM = re.compile(r"(\w+)=([^,\s]*)")


class SigV4:
    """The parts of an ``Authorization: AWS4-HMAC-SHA256 ...`` header."""

    def __init__(
        self, algorithm: str, access_key_id: str, scope: str, signed_headers: list[str], signature: str
    ) -> None:
        self.algorithm = algorithm
        self.access_key_id = access_key_id
        self.scope = scope  # date/region/service/aws4_request
        self.signed_headers = signed_headers
        self.signature = signature

    @staticmethod
    def parse(header: str | None) -> SigV4 | None:
        if not header:
            return None
        algorithm, _, rest = header.strip().partition(" ")
        params = dict(_AUTH_PARAM.findall(rest))
        credential = params.get("Credential", "")
        akid, _, scope = credential.partition("/")
        if not akid:
            return None
        signed = [h for h in params.get("SignedHeaders", "").split(";") if h]
        return SigV4(algorithm, akid, scope, signed, params.get("Signature", ""))


def canonical_query(query: str) -> str:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    enc = [(urllib.parse.quote(k, safe="-_.~"), urllib.parse.quote(v, safe="-_.~")) for k, v in pairs]
    return "&".join(f"{k}={v}" for k, v in sorted(enc))


def sigv4_signature(
    secret: str,
    auth: SigV4,
    method: str,
    target: str,
    header_values: Callable[[str], list[str]],
    body: bytes,
) -> str | None:
    """The signature ``auth`` should carry, computed with ``secret`` from the request as
    received (AWS's SigV4: canonical request, string to sign, derived key); None when the
    request lacks what SigV4 needs (X-Amz-Date, a four-part scope, host signed)."""
    scope = auth.scope.split("/")
    amz_date = next(iter(header_values("x-amz-date")), "")
    if auth.algorithm != "AWS4-HMAC-SHA256" or len(scope) != 4 or not amz_date or "host" not in auth.signed_headers:
        return None
    u = urllib.parse.urlsplit(target)
    # Not S3: the path is URI-encoded once more on top of how it travelled.
    canonical_uri = urllib.parse.quote(u.path or "/", safe="/~")
    headers = "".join(
        f"{name}:{','.join(' '.join(v.split()) for v in header_values(name))}\n" for name in auth.signed_headers
    )
    payload = next(iter(header_values("x-amz-content-sha256")), "") or hashlib.sha256(body).hexdigest()
    canonical_request = "\n".join(
        [method, canonical_uri, canonical_query(u.query), headers, ";".join(auth.signed_headers), payload]
    )
    to_sign = "\n".join([auth.algorithm, amz_date, auth.scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in scope:
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def sts_error_body(code: str, message: str | None = None) -> tuple[int, bytes]:
    status, fault, default_message = STS_ERRORS.get(code) or (
        (ERRORS[code][0], "Sender", ERRORS[code][1]) if code in ERRORS else (400, "Sender", code)
    )
    body = (
        f'<ErrorResponse xmlns="{STS_XMLNS}"><Error><Type>{fault}</Type><Code>{escape(code)}</Code>'
        f"<Message>{escape(message or default_message)}</Message></Error>"
        f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )
    return status, body.encode()


def caller_identity_body(role_arn: str, session: str = COGNITO_SESSION) -> bytes:
    arn, user_id, account = assumed_role(role_arn, session)
    return (
        f'<GetCallerIdentityResponse xmlns="{STS_XMLNS}"><GetCallerIdentityResult>'
        f"<Arn>{escape(arn)}</Arn><UserId>{escape(user_id)}</UserId><Account>{escape(account)}</Account>"
        f"</GetCallerIdentityResult><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId>"
        f"</ResponseMetadata></GetCallerIdentityResponse>"
    ).encode()


# ----- the basic flow ----------------------------------------------------------
def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def issue_open_id_token(identity: str | None, pool: str | None) -> str:
    """A token shaped like Cognito's (a signed JWT: sub = identity, aud = pool,
    amr = unauthenticated, 10 minutes), remembered for AssumeRoleWithWebIdentity."""
    now = int(time.time())
    header = {"kid": "testbed-1", "typ": "JWS", "alg": "RS512"}
    claims = {
        "sub": identity,
        "aud": pool,
        "amr": ["unauthenticated"],
        "iss": "https://cognito-identity.amazonaws.com",
        "exp": now + OPEN_ID_TOKEN_SECONDS,
        "iat": now,
    }
    token = ".".join(
        [
            _b64url(json.dumps(header).encode()),
            _b64url(json.dumps(claims).encode()),
            _b64url(secrets.token_bytes(256)),
        ]
    )
    with STATE.lock:
        if len(STATE.open_id_tokens) < 200_000:
            STATE.open_id_tokens[token] = {
                "identity": identity,
                "pool": pool,
                "amr": "unauthenticated",
                "expires_at": now + OPEN_ID_TOKEN_SECONDS,
            }
    return token


def classic_allowed(pool: str) -> bool:
    """The pool's AllowClassicFlow (a pool the proxy did not create: allowed)."""
    with STATE.lock:
        return STATE.pool_classic.get(pool, True)


def register_role(data: dict[str, Any]) -> dict[str, Any]:
    """Adds or replaces an IAM role AssumeRoleWithWebIdentity may assume."""
    arn = data.get("arn")
    if not isinstance(arn, str) or not re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$", arn):
        raise ValueError("arn must be an IAM role ARN")
    unknown = set(data) - {"arn", "trusted_pools", "amr", "max_session_seconds"}
    if unknown:
        raise ValueError(f"unknown role keys: {sorted(unknown)}")
    pools = data.get("trusted_pools") or []
    if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
        raise ValueError("trusted_pools must be a list of identity pool ids")
    amr = data.get("amr", "unauthenticated")
    if amr not in (None, "unauthenticated", "authenticated"):
        raise ValueError("amr must be 'unauthenticated', 'authenticated' or null (any)")
    max_seconds = int(data.get("max_session_seconds") or DEFAULT_MAX_SESSION_SECONDS)
    if not 3600 <= max_seconds <= 43200:
        raise ValueError("max_session_seconds must be between 3600 and 43200, as IAM's MaxSessionDuration")
    role = {"arn": arn, "trusted_pools": list(pools), "amr": amr, "max_session_seconds": max_seconds}
    with STATE.lock:
        STATE.roles[arn] = role
    return role


def trust_pool(role_arn: str, pool: str) -> None:
    """What the Cognito console does for a new pool: its unauthenticated role trusts it."""
    with STATE.lock:
        role = STATE.roles.setdefault(
            role_arn,
            {
                "arn": role_arn,
                "trusted_pools": [],
                "amr": "unauthenticated",
                "max_session_seconds": DEFAULT_MAX_SESSION_SECONDS,
            },
        )
        if pool not in role["trusted_pools"]:
            role["trusted_pools"].append(pool)


def web_identity_refusal(token: dict[str, Any] | None, params: dict[str, str]) -> tuple[str, str] | None:
    """What STS would refuse in an AssumeRoleWithWebIdentity (code, message), in the
    order it checks: the parameters, the token, the role's trust, the duration."""
    for key in ("RoleArn", "RoleSessionName", "WebIdentityToken"):
        if not params.get(key):
            field = key[0].lower() + key[1:]
            return (
                "ValidationError",
                f"1 validation error detected: Value null at '{field}' failed to satisfy constraint: "
                "Member must not be null",
            )
    session = params["RoleSessionName"]
    if not ROLE_SESSION_NAME.match(session):
        return (
            "ValidationError",
            f"1 validation error detected: Value '{session}' at 'roleSessionName' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*",
        )
    raw = params.get("DurationSeconds") or "3600"
    lo, hi = STS_DURATION_RANGE
    try:
        duration = int(raw)
    except ValueError:
        duration = -1
    if not lo <= duration <= hi:
        bound = f"greater than or equal to {lo}" if duration < lo else f"less than or equal to {hi}"
        return (
            "ValidationError",
            f"1 validation error detected: Value '{raw}' at 'durationSeconds' failed to satisfy "
            f"constraint: Member must have value {bound}",
        )
    if token is None:
        return ("InvalidIdentityToken", STS_ERRORS["InvalidIdentityToken"][2])
    if time.time() >= token["expires_at"]:
        expired = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(token["expires_at"]))
        now = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())
        return (
            "ExpiredTokenException",
            f"Token expired: current date/time {now} must be before the expiration date/time{expired}",
        )
    with STATE.lock:
        role = STATE.roles.get(params["RoleArn"])
        role = dict(role) if role else None
    if (
        role is None
        or token["pool"] not in role["trusted_pools"]
        or (role["amr"] is not None and role["amr"] != token["amr"])
    ):
        return ("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
    if duration > role["max_session_seconds"]:
        return ("ValidationError", "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.")
    return None


def assume_role_body(
    role_arn: str, session: str, creds: dict[str, Any], identity: str | None, pool: str | None
) -> bytes:
    arn, user_id, _ = assumed_role(role_arn, session)
    expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(creds["Expiration"]))
    return (
        f'<AssumeRoleWithWebIdentityResponse xmlns="{STS_XMLNS}"><AssumeRoleWithWebIdentityResult>'
        f"<Audience>{escape(pool or '')}</Audience>"
        f"<AssumedRoleUser><Arn>{escape(arn)}</Arn><AssumedRoleId>{escape(user_id)}</AssumedRoleId></AssumedRoleUser>"
        f"<Provider>cognito-identity.amazonaws.com</Provider>"
        f"<Credentials><AccessKeyId>{escape(creds['AccessKeyId'])}</AccessKeyId>"
        f"<SecretAccessKey>{escape(creds['SecretKey'])}</SecretAccessKey>"
        f"<SessionToken>{escape(creds['SessionToken'])}</SessionToken>"
        f"<Expiration>{expiration}</Expiration></Credentials>"
        f"<SubjectFromWebIdentityToken>{escape(identity or '')}</SubjectFromWebIdentityToken>"
        f"</AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId>"
        f"</ResponseMetadata></AssumeRoleWithWebIdentityResponse>"
    ).encode()


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

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _aws_error(self, error: str, message: str | None = None, status: int | None = None) -> None:
        if error in ERRORS:
            default_status, default_message = ERRORS[error]
        else:  # an STS error code in a rule that also matches Cognito operations
            default_status, _, default_message = STS_ERRORS[error]
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
        if not self.path.startswith("/_proxy/") and "Action" in self._query():
            return self._sts(b"")
        self._control("GET")

    def do_DELETE(self) -> None:
        self._control("DELETE")

    def do_PUT(self) -> None:
        self._control("PUT")

    def do_POST(self) -> None:
        if self.path.startswith("/_proxy/"):
            return self._control("POST")
        raw = self._body()
        if "X-Amz-Target" not in self.headers and ("Action" in self._query() or "Action" in self._form(raw)):
            return self._sts(raw)
        self._cognito(raw)

    def _query(self) -> dict[str, str]:
        query = urllib.parse.urlsplit(self.path).query
        return dict(urllib.parse.parse_qsl(query, keep_blank_values=True))

    @staticmethod
    def _form(raw: bytes) -> dict[str, str]:
        try:
            return dict(urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            return {}

    def _faults(
        self, operation: str, m: Matched, error: Callable[[str, str | None, int | None], None], throttle: str
    ) -> bool:
        """Latency, throttling and the first fault rule; True when the request was answered."""
        if m.delay_ms:
            time.sleep(m.delay_ms / 1000.0)
        if m.throttled:
            with STATE.lock:
                STATE.outcome(operation, throttle)
            error(throttle, None, None)
            return True
        if m.fault is None:
            return False
        spec = m.fault.spec
        with STATE.lock:
            STATE.outcome(operation, spec.get("error") or spec.get("connection") or f"http{spec.get('http_status')}")
        if spec.get("connection") == "reset":
            self._reset()
        elif spec.get("connection") == "drop":
            self._drop()
        elif spec.get("error"):
            error(spec["error"], spec.get("message"), spec.get("status"))
        else:
            self._send(
                int(spec["http_status"]),
                str(spec.get("body") or "<html><body>Service Unavailable</body></html>").encode(),
                {"Content-Type": "text/html"},
            )
        return True

    # ----- the Cognito path -----------------------------------------------
    def _cognito(self, raw: bytes) -> None:
        target = self.headers.get("X-Amz-Target", "")
        operation = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else target or "Unknown"
        try:
            payload = json.loads(raw or b"{}")
        except ValueError:
            payload = {}
        identity = payload.get("IdentityId")
        with STATE.lock:
            pool = payload.get("IdentityPoolId") or STATE.identity_pool.get(identity or "")
            STATE.count(operation, pool, identity)
            m = STATE.match(operation, pool)
            deleted = identity in STATE.deleted_identities

        if self._faults(operation, m, self._aws_error, "TooManyRequestsException"):
            return

        if m.semantics:
            refusal = self._semantic_refusal(operation, pool, identity, deleted)
            if refusal is not None:
                with STATE.lock:
                    STATE.outcome(operation, refusal[0])
                return self._aws_error(*refusal)

        custom_role = payload.get("CustomRoleArn") if isinstance(payload.get("CustomRoleArn"), str) else None
        self._forward(raw, operation, pool, m.unique, m.lifetime, custom_role)

    def _semantic_refusal(
        self, operation: str, pool: str | None, identity: str | None, deleted: bool
    ) -> tuple[str, str] | None:
        """What real Cognito would refuse that moto lets through."""
        if operation in ("GetCredentialsForIdentity", "GetOpenIdToken") and deleted:
            return ("ResourceNotFoundException", f"Identity '{identity}' not found.")
        if operation not in ("GetId", "GetCredentialsForIdentity", "GetOpenIdToken") or not pool:
            return None
        status, desc = moto_call("DescribeIdentityPool", {"IdentityPoolId": pool}, region_of(pool))
        if status != 200:
            if operation == "GetId":
                return ("ResourceNotFoundException", f"IdentityPool '{pool}' not found.")
            return ("ResourceNotFoundException", f"Identity '{identity}' not found.")
        if not desc.get("AllowUnauthenticatedIdentities"):
            return ("NotAuthorizedException", ERRORS["NotAuthorizedException"][1])
        if operation == "GetOpenIdToken" and not classic_allowed(pool):
            return ("InvalidParameterException", CLASSIC_FLOW_OFF)
        return None

    def _forward(
        self,
        raw: bytes,
        operation: str,
        pool: str | None,
        unique: bool,
        lifetime: int | None,
        custom_role: str | None = None,
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
            resp_headers = {
                k: v
                for k, v in resp.getheaders()
                if k.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server")
            }
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
                if operation == "GetOpenIdToken" and obj.get("Token"):
                    # moto's token is a random id that nothing checks: hand out one STS can.
                    identity = obj.get("IdentityId")
                    owner = pool or (self._learn_pool(identity) if identity else None)
                    obj["Token"] = issue_open_id_token(identity, owner)
                    body = json.dumps(obj).encode()
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
                        STATE.remember(creds, obj.get("IdentityId"), pool, custom_role)
                    body = json.dumps(obj).encode()
        with STATE.lock:
            STATE.outcome(operation, "ok" if status == 200 else f"upstream{status}")
        self._send(status, body, resp_headers)

    # ----- the STS path ---------------------------------------------------
    def _sts_error(self, code: str, message: str | None = None, status: int | None = None) -> None:
        default_status, body = sts_error_body(code, message)
        self._send(status or default_status, body, {"Content-Type": "text/xml", "x-amzn-RequestId": str(uuid.uuid4())})

    def _classify(
        self, auth: SigV4 | None, token: str | None, raw: bytes, method: str
    ) -> tuple[str, dict[str, Any] | None]:
        """How the credentials of an STS call stand, and what the proxy issued for that key."""
        if auth is None:
            return "unknown", None
        with STATE.lock:
            rec = STATE.keys.get(auth.access_key_id)
            rec = dict(rec) if rec else None
            newest = STATE.newest_key.get(rec["identity"]) if rec and rec["identity"] else None
        if rec is None:
            return "unknown", None
        if token != rec["token"]:
            return "bad_token", rec
        if rec["expires_at"] is not None and time.time() >= rec["expires_at"]:
            return "expired", rec
        want = sigv4_signature(
            rec["secret"] or "", auth, method, self.path, lambda name: self.headers.get_all(name) or [], raw
        )
        if want is None or not hmac.compare_digest(want, auth.signature):
            return "bad_signature", rec
        return ("current" if newest in (None, auth.access_key_id) else "previous"), rec

    def _sts(self, raw: bytes) -> None:
        method = self.command
        params = {**self._form(raw), **self._query()}
        action = params.get("Action") or "Unknown"
        if action == "AssumeRoleWithWebIdentity":
            return self._assume_role_with_web_identity(params)
        auth = SigV4.parse(self.headers.get("Authorization"))
        cls, rec = self._classify(auth, self.headers.get("X-Amz-Security-Token"), raw, method)
        identity = rec["identity"] if rec else None
        pool = rec["pool"] if rec else None
        if rec is not None and pool is None and identity:
            pool = self._learn_pool(identity)
        if action not in STS_OPERATIONS:
            outcome = "InvalidAction"
        elif cls in ("current", "previous"):
            outcome = "ok"
        elif cls == "unknown" and auth is None:
            outcome = "MissingAuthenticationToken"
        else:
            outcome = {"expired": "ExpiredToken", "bad_signature": "SignatureDoesNotMatch"}.get(
                cls, "InvalidClientTokenId"
            )
        m = self._record_sts_call(
            action,
            pool,
            identity,
            outcome,
            {
                "access_key_id": auth.access_key_id if auth else None,
                "class": cls,
                "expires_at": rec["expires_at"] if rec else None,
            },
        )
        if self._faults(action, m, self._sts_error, "Throttling"):
            return
        with STATE.lock:
            STATE.outcome(action, outcome)
        if outcome == "InvalidAction":
            return self._sts_error(
                outcome, f"Could not find operation {action} for version {STS_VERSION} in the test-bed proxy"
            )
        if outcome != "ok" or rec is None:
            return self._sts_error(outcome)
        role = rec["role"] or unauth_role(pool) or default_unauth_role("")
        self._send(
            200,
            caller_identity_body(role, rec.get("session") or COGNITO_SESSION),
            {"Content-Type": "text/xml", "x-amzn-RequestId": str(uuid.uuid4())},
        )

    def _record_sts_call(
        self, action: str, pool: str | None, identity: str | None, outcome: str, fields: dict[str, Any]
    ) -> Any:
        """Counts an STS call, finds the rule that applies, and records the call with what it
        will be answered (a rule's fault wins over `outcome`). Returns the rule match."""
        with STATE.lock:
            STATE.count(action, pool, identity)
            m = STATE.match(action, pool)
            if m.throttled:
                answered = "Throttling"
            elif m.fault is not None:
                spec = m.fault.spec
                answered = spec.get("error") or spec.get("connection") or f"http{spec.get('http_status')}"
            else:
                answered = outcome
            if len(STATE.sts_calls) < 200_000:
                STATE.sts_calls.append(
                    {
                        "time": time.time(),
                        "action": action,
                        "identity_id": identity,
                        "pool": pool,
                        "user_agent": self.headers.get("User-Agent"),
                        "outcome": answered,
                        **fields,
                    }
                )
        return m

    def _assume_role_with_web_identity(self, params: dict[str, str]) -> None:
        """STS AssumeRoleWithWebIdentity (unsigned): the token must be one GetOpenIdToken
        handed out and still valid, the role must trust its pool and amr, and the
        duration must fit the role; the answer is fresh credentials lasting
        DurationSeconds (or a matching rule's lifetime_seconds)."""
        action = "AssumeRoleWithWebIdentity"
        with STATE.lock:
            token = STATE.open_id_tokens.get(params.get("WebIdentityToken") or "")
            token = dict(token) if token else None
        identity = token["identity"] if token else None
        pool = token["pool"] if token else None
        refusal = web_identity_refusal(token, params)
        m = self._record_sts_call(
            action,
            pool,
            identity,
            refusal[0] if refusal else "ok",
            {
                "access_key_id": None,
                "class": "token" if token else "unknown_token",
                "role_arn": params.get("RoleArn"),
                "role_session_name": params.get("RoleSessionName"),
                "duration_seconds": params.get("DurationSeconds"),
            },
        )
        if self._faults(action, m, self._sts_error, "Throttling"):
            return
        if refusal is not None:
            with STATE.lock:
                STATE.outcome(action, refusal[0])
            return self._sts_error(*refusal)
        creds: dict[str, Any] = fresh_credentials()
        lifetime = m.lifetime if m.lifetime is not None else int(params.get("DurationSeconds") or 3600)
        creds["Expiration"] = int(time.time()) + int(lifetime)
        role_arn, session = params["RoleArn"], params["RoleSessionName"]
        with STATE.lock:
            if len(STATE.issued) < 200_000:
                STATE.issued.append({k: creds[k] for k in ("AccessKeyId", "SecretKey", "SessionToken")})
            STATE.remember(creds, identity, pool, role_arn, session)
            STATE.outcome(action, "ok")
        self._send(
            200,
            assume_role_body(role_arn, session, creds, identity, pool),
            {"Content-Type": "text/xml", "x-amzn-RequestId": str(uuid.uuid4())},
        )

    @staticmethod
    def _learn_pool(identity: str) -> str | None:
        """The pool of an identity the proxy did not see created (it was restarted since)."""
        with STATE.lock:
            if identity in STATE.unmapped_identities:
                return None
        pool = pool_of_identity(identity)
        with STATE.lock:
            if pool is None:
                STATE.unmapped_identities.add(identity)
            else:
                STATE.identity_pool.setdefault(identity, pool)
                for rec in STATE.keys.values():
                    if rec["identity"] == identity and rec["pool"] is None:
                        rec["pool"] = pool
        return pool

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
                return self._json(200, {"credentials": STATE.issued, "open_id_tokens": list(STATE.open_id_tokens)})
        if head == "sts-calls" and method in ("GET", "DELETE"):
            q = self._query()
            keep = {k: q[k] for k in ("pool", "identity_id", "access_key_id") if k in q}

            def selected(c: dict[str, Any]) -> bool:
                return all(c.get(k) == v for k, v in keep.items())

            with STATE.lock:
                if method == "GET":
                    return self._json(200, {"calls": [c for c in STATE.sts_calls if selected(c)]})
                before = len(STATE.sts_calls)
                STATE.sts_calls = [c for c in STATE.sts_calls if not selected(c)]
                return self._json(200, {"deleted": before - len(STATE.sts_calls)})
        if method == "POST" and head == "reset":
            with STATE.lock:
                STATE.reset()
            return self._json(200, {"ok": True})
        if head == "rules":
            return self._rules(method, parts[1:], data)
        if head == "pools":
            return self._pools(method, parts[1:], data)
        if head == "roles":
            return self._roles(method, data)
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

    def _roles(self, method: str, data: dict[str, Any]) -> None:
        """IAM roles for AssumeRoleWithWebIdentity: POST adds or replaces one, GET lists
        them, DELETE ?arn= removes one."""
        if method == "POST":
            return self._json(200, register_role(data))
        if method == "GET":
            with STATE.lock:
                return self._json(200, {"roles": [dict(r) for r in STATE.roles.values()]})
        if method == "DELETE":
            arn = self._query().get("arn", "")
            with STATE.lock:
                gone = STATE.roles.pop(arn, None)
            return self._json(200 if gone else 404, {"deleted": arn})
        self._json(405, {"error": "method not allowed"})

    def _pools(self, method: str, rest: list[str], data: dict[str, Any]) -> None:
        if method == "POST" and not rest:
            region = data.get("region") or os.environ.get("AWS_REGION", "us-east-1")
            name = data.get("name") or f"testbed_{secrets.token_hex(4)}"
            role = data.get("unauth_role") or default_unauth_role(name)
            if not isinstance(role, str) or not role.startswith("arn:aws:iam::"):
                raise ValueError("unauth_role must be an IAM role ARN")
            status, body = moto_call(
                "CreateIdentityPool",
                {"IdentityPoolName": name, "AllowUnauthenticatedIdentities": bool(data.get("guest", True))},
                region,
            )
            if status == 200 and body.get("IdentityPoolId"):
                # moto has no SetIdentityPoolRoles: the proxy keeps the pool's roles.
                with STATE.lock:
                    STATE.pool_roles[body["IdentityPoolId"]] = role
                    STATE.pool_classic[body["IdentityPoolId"]] = bool(data.get("classic", False))
                body["Roles"] = {"unauthenticated": role}
                body["AllowClassicFlow"] = bool(data.get("classic", False))
                # As the console does: the pool's guest role trusts it (amr unauthenticated).
                trust_pool(role, body["IdentityPoolId"])
            return self._json(status, body)
        if len(rest) == 1:
            pool = rest[0]
            if method == "GET":
                status, body = moto_call("DescribeIdentityPool", {"IdentityPoolId": pool}, region_of(pool))
                if status == 200:
                    role = unauth_role(pool)
                    body["Roles"] = {"unauthenticated": role} if role else {}
                    body["AllowClassicFlow"] = classic_allowed(pool)
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
                if status == 200 and "classic" in data:
                    with STATE.lock:
                        STATE.pool_classic[pool] = bool(data["classic"])
                if status == 200:
                    body["AllowClassicFlow"] = classic_allowed(pool)
                return self._json(status, body)
        self._json(404, {"error": "no such pools route"})


def main() -> int:
    global STATE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:0", help="host:port (loopback)")
    ap.add_argument("--upstream", required=True, help="moto's URL, e.g. http://127.0.0.1:5000")
    ap.add_argument("--port-file", help="write the bound port here once listening")
    ap.add_argument(
        "--also-listen",
        action="append",
        default=[],
        metavar="HOST",
        help="serve on this address too, same port (the node's pods reach the host there)",
    )
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    STATE = State(args.upstream)
    ThreadingHTTPServer.request_queue_size = 512
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    bound = server.server_address[1]
    for extra in args.also_listen:
        more = ThreadingHTTPServer((extra, bound), Handler)
        more.daemon_threads = True
        threading.Thread(target=more.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        print(f"cognito proxy also on http://{extra}:{bound}", flush=True)
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

"""What the proxy's tests share: the emulator (moto's server and the proxy, started as
testbed/up.sh starts them), its control API, AWS clients pointed at it, raw HTTP."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import boto3
import pytest
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

PROXY_PY = Path(__file__).resolve().parent.parent / "proxy.py"
# The venv's bin: moto_server beside the python running the tests (not resolved: a venv's
# python is a link to the system's).
BIN = Path(sys.executable).parent
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's, and the proxy's default
HOST = "127.0.0.1"
# One attempt per call: botocore would retry throttling and 5xx, and the tests count calls.
ONE_ATTEMPT = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30)
COGNITO_TARGET = "AWSCognitoIdentityService."

# The tests see none of the machine's AWS configuration (profiles, endpoints, retries).
for _name in [n for n in os.environ if n.startswith("AWS_")]:
    del os.environ[_name]
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull


def free_port() -> int:
    """A free TCP port on 127.0.0.1, as testbed/lib.sh's free_port picks it."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(seconds: float, what: str, ready: Callable[[], bool], alive: Callable[[], str | None]) -> None:
    """Polls ``ready`` until it holds; fails after ``seconds``, or at once when ``alive``
    reports that a process it waits for has died."""
    deadline = time.monotonic() + seconds
    while not ready():
        dead = alive()
        if dead:
            raise RuntimeError(f"{what}: {dead}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {seconds}s waiting for {what}")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=2)
    try:
        conn.request("GET", u.path or "/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class Process:
    """A child in its own session (testbed/lib.sh's start), logging to a file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )

    def died(self) -> str | None:
        if self.proc.poll() is None:
            return None
        tail = self.log.read_text(errors="replace").splitlines()[-20:]
        return f"{self.name} exited with {self.proc.returncode}:\n" + "\n".join(tail)

    def stop(self) -> None:
        """TERM the process group, wait up to 10 s, then KILL it (testbed/lib.sh's stop)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


class Emulator:
    """moto's server and the proxy in front of it, on free loopback ports."""

    def __init__(self, workdir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MOTO_ACCOUNT_ID"}
        env["AWS_REGION"] = REGION
        moto_port = free_port()
        self.moto_url = f"http://{HOST}:{moto_port}"
        port_file = workdir / "proxy.port"
        # As testbed/up.sh starts them, less --also-listen (the node's link address, which
        # exists only while the test bed's node network is up).
        self.processes = [
            Process("moto", [str(BIN / "moto_server"), "-H", HOST, "-p", str(moto_port)], workdir / "moto.log", env)
        ]
        try:
            proxy_argv = [sys.executable, str(PROXY_PY), "--upstream", self.moto_url, "--listen", f"{HOST}:0"]
            self.processes.append(
                Process("proxy", [*proxy_argv, "--port-file", str(port_file)], workdir / "proxy.log", env)
            )
            wait_until(30, "the Cognito proxy's port file", port_file.exists, self._died)
            self.port = int(port_file.read_text())
            self.url = f"http://{HOST}:{self.port}"
            wait_until(30, "moto", lambda: http_ok(self.moto_url + "/moto-api/"), self._died)
            wait_until(30, "the Cognito proxy", lambda: http_ok(self.url + "/_proxy/health"), self._died)
        except BaseException:
            self.stop()
            raise

    def _died(self) -> str | None:
        return next((why for why in (p.died() for p in self.processes) if why), None)

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()

    # ----- the control API
    def control(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, _, raw = self.raw(method, "/_proxy" + path, json.dumps(body).encode() if body is not None else b"")
        return status, json.loads(raw or b"{}")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, obj = self.control(method, path, body)
        assert status == 200, (method, path, status, obj)
        return obj

    def rule(self, **spec: Any) -> dict[str, Any]:
        return self.ok("POST", "/rules", spec)

    def pool(self, **spec: Any) -> str:
        """A new identity pool on moto (guest access on unless told), its id."""
        spec.setdefault("guest", True)
        spec.setdefault("region", REGION)
        return self.ok("POST", "/pools", spec)["IdentityPoolId"]

    def calls(self) -> dict[str, Any]:
        return self.ok("GET", "/calls")

    def sts_calls(self, **filters: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        return self.ok("GET", "/sts-calls" + (f"?{query}" if query else ""))["calls"]

    # ----- raw HTTP
    def raw(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def cognito_raw(self, operation: str, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        """One Cognito call as the SDKs send it unsigned (GetId and friends are public)."""
        return self.raw(
            "POST",
            "/",
            json.dumps(payload).encode(),
            {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": COGNITO_TARGET + operation},
        )

    # ----- AWS clients
    def cognito(self) -> Any:
        return boto3.client(
            "cognito-identity",
            region_name=REGION,
            endpoint_url=self.url,
            config=ONE_ATTEMPT.merge(Config(signature_version=UNSIGNED)),
        )

    def sts(self, creds: dict[str, Any] | None = None) -> Any:
        """An STS client signing with ``creds`` (Cognito's shape), or unsigned."""
        if creds is None:
            return boto3.client(
                "sts",
                region_name=REGION,
                endpoint_url=self.url,
                config=ONE_ATTEMPT.merge(Config(signature_version=UNSIGNED)),
            )
        return boto3.client(
            "sts",
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretKey"],
            aws_session_token=creds.get("SessionToken"),
            config=ONE_ATTEMPT,
        )

    def signed_caller_identity(self, creds: dict[str, Any], body: bytes | None = None) -> tuple[int, bytes]:
        """GetCallerIdentity signed with botocore's SigV4 over the form body; ``body``
        replaces what was signed (a request changed after signing)."""
        form = b"Action=GetCallerIdentity&Version=2011-06-15"
        req = AWSRequest(
            "POST", self.url + "/", data=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        SigV4Auth(
            Credentials(creds["AccessKeyId"], creds["SecretKey"], creds.get("SessionToken")), "sts", REGION
        ).add_auth(req)
        status, _, raw = self.raw("POST", "/", body if body is not None else form, dict(req.headers.items()))
        return status, raw


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, str]:
    """(HTTP status, error code, message) of an AWS error answer."""
    r = exc.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], r["Error"]["Message"]


def sts_xml_error(raw: bytes) -> tuple[str, str, str]:
    """(Type, Code, Message) of STS's XML error."""
    ns = {"s": "https://sts.amazonaws.com/doc/2011-06-15/"}
    err = ElementTree.fromstring(raw).find("s:Error", ns)
    assert err is not None, raw
    type_, code, message = (err.findtext(f"s:{k}", default="", namespaces=ns) for k in ("Type", "Code", "Message"))
    return type_, code, message


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def expires_in(expiration: Any) -> float:
    """Seconds from now until a credential's Expiration (a datetime, as botocore parses it)."""
    return expiration.timestamp() - time.time()

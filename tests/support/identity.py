"""The tenant's embedded OIDC provider (roles/identity/files) for tests that run it themselves: installed as a
deploy installs it in install_root/identity, started on a provisioned tenant, and reached as the gateway reaches
it (loopback TCP) and as browsers do (through the front door's unix socket)."""


from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import secrets
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from appliance.identity import accounts
from appliance.identity.provider import NODE_ENVIRONMENT, NODE_FLAGS
from appliance.roles import role_files
from tests.support.stack import TenantEnv
from tests.support.streams import node_program_dir

# Small enough to reach in a test, as a tenant could set them.
LOGIN_LIMITS = {"max_failures": 3, "lockout_s": 900, "per_client_per_minute": 8}
PASSWORD = "correct horse battery staple"
# Every browser a test makes has an address of its own, so per-address limits never couple tests.
_ADDRESSES = (f"198.51.100.{n}" for n in itertools.count(1))


class FrontDoorTransport(httpx.BaseTransport):
    """What the front door does for a browser: TLS ends there and the request goes on, plain HTTP, over the
    provider's socket with X-Forwarded-Proto/-Host/-For (the browser's address)."""

    def __init__(self, socket_path: Path, client_address: str) -> None:
        self.inner = httpx.HTTPTransport(uds=str(socket_path))
        self.client_address = client_address

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        headers = request.headers.copy()
        headers["x-forwarded-proto"] = request.url.scheme
        headers["x-forwarded-host"] = request.url.netloc.decode()
        headers["x-forwarded-for"] = self.client_address
        forwarded = httpx.Request(request.method, request.url.copy_with(scheme="http"), headers=headers,
                                  stream=request.stream)
        return self.inner.handle_request(forwarded)

    def close(self) -> None:
        self.inner.close()


class TenantDoor(httpx.BaseTransport):
    """The front door of one tenant for a scripted browser: /idp/* to the provider's socket (with the client's
    address), everything else to the gateway."""

    def __init__(self, provider: Provider, gateway_url: str, client_address: str) -> None:
        self.provider = FrontDoorTransport(provider.socket, client_address)
        self.gateway = httpx.HTTPTransport()
        self.gateway_url = httpx.URL(gateway_url)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/idp/"):
            return self.provider.handle_request(request)
        target = request.url.copy_with(scheme="http", host=self.gateway_url.host, port=self.gateway_url.port)
        headers = request.headers.copy()
        headers["host"] = request.url.netloc.decode()
        return self.gateway.handle_request(httpx.Request(request.method, target, headers=headers,
                                                         stream=request.stream))

    def close(self) -> None:
        self.provider.close()
        self.gateway.close()


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def form_action(html: str) -> str:
    match = re.search(r'<form[^>]*action="([^"]+)"', html)
    assert match, html
    return match.group(1).replace("&#61;", "=").replace("&amp;", "&")


def hidden_fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))


@dataclass
class Provider:
    env: TenantEnv
    config: dict[str, Any]
    process: subprocess.Popen[bytes]
    log: Path
    # Codes, tokens and link secrets the tests handled: none of them may reach the provider's log.
    secrets_seen: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.config["listen"]["port"])

    @property
    def socket(self) -> Path:
        return Path(self.config["listen"]["socket"])

    @property
    def issuer(self) -> str:
        return str(self.config["issuer"])

    @property
    def origin(self) -> str:
        split = urlsplit(self.issuer)
        return f"{split.scheme}://{split.netloc}"

    @property
    def tcp_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tcp(self, **kwargs: Any) -> httpx.Client:
        """The provider as the gateway reaches it: loopback TCP."""
        return httpx.Client(base_url=self.tcp_url, timeout=30, **kwargs)

    def browser(self, client_address: str | None = None) -> httpx.Client:
        """A browser at `client_address` (a fresh one by default) going through the front door."""
        address = client_address or next(_ADDRESSES)
        return httpx.Client(base_url=self.origin, timeout=30,
                            transport=FrontDoorTransport(self.socket, address))

    def client_secret(self, client_id: str = "gateway") -> str:
        client = next(c for c in self.config["clients"] if c["client_id"] == client_id)
        return Path(client["client_secret_file"]).read_text().strip()

    def redirect_uri(self) -> str:
        client = next(c for c in self.config["clients"] if c["client_id"] == "gateway")
        return str(client["redirect_uris"][0])

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.env.superuser() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def add_account(self, name: str, password: str | None = PASSWORD) -> tuple[uuid.UUID, str]:
        """A person (an email unique to this call); (account id, email)."""
        email = f"{name}-{secrets.token_hex(3)}@example.org"
        with self.env.superuser() as conn:
            account = accounts.add(conn, self.env.tenant, email, display_name=name.title(), password=password)
        return account.id, email

    def setup_link(self, email: str) -> str:
        with self.env.superuser() as conn:
            link = accounts.setup_link(conn, self.env.tenant, email)
        self.secrets_seen.append(link.rsplit("/", 1)[1])
        return link

    def events(self, action: str, subject: str | None = None) -> list[dict[str, Any]]:
        rows = self.sql("SELECT actor, action, subject, detail FROM identity.events WHERE action = %s"
                        " AND (%s::text IS NULL OR subject = %s) ORDER BY id", [action, subject, subject])
        return [{"actor": r[0], "action": r[1], "subject": r[2], "detail": r[3]} for r in rows]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    # -- flows, as scripts drive them ------------------------------------------------------------------------

    def sign_in(self, browser: httpx.Client, location: str, email: str, password: str) -> httpx.Response:
        """From an interaction URL: the login page, then the credentials posted; the answer to the POST."""
        page = browser.get(location)
        assert page.status_code == 200, page.text
        assert 'type="password"' in page.text
        return browser.post(urljoin(str(page.url), form_action(page.text)),
                            data={"email": email, "password": password})

    def follow(self, browser: httpx.Client, response: httpx.Response, stop_at: str) -> httpx.Response:
        """Follow redirects until one points at `stop_at` (not fetched); that redirect is returned."""
        for _ in range(10):
            assert response.status_code in (302, 303), (response.status_code, response.text[:500])
            location = urljoin(str(response.url), response.headers["location"])
            if location.startswith(stop_at):
                return response
            response = browser.get(location)
        raise AssertionError("too many redirects")

    def authorize(self, browser: httpx.Client, challenge: str, nonce: str, state: str) -> httpx.Response:
        return browser.get("/idp/auth", params={
            "client_id": "gateway", "response_type": "code", "scope": "openid email profile",
            "redirect_uri": self.redirect_uri(), "code_challenge": challenge, "code_challenge_method": "S256",
            "nonce": nonce, "state": state,
        })

    def code_flow(self, email: str, password: str = PASSWORD,
                  browser: httpx.Client | None = None) -> tuple[str, str, str]:
        """A browser signs in for the gateway: (code, verifier, nonce)."""
        browser = browser or self.browser()
        verifier, challenge = pkce_pair()
        nonce, state = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        start = self.authorize(browser, challenge, nonce, state)
        assert start.status_code == 303, start.text
        login = self.sign_in(browser, start.headers["location"], email, password)
        done = self.follow(browser, login, self.redirect_uri())
        query = parse_qs(urlsplit(done.headers["location"]).query)
        assert query["state"] == [state], query
        self.secrets_seen.append(query["code"][0])
        return query["code"][0], verifier, nonce

    def exchange(self, code: str, verifier: str | None) -> httpx.Response:
        """The gateway's token request for `code`, over TCP with the public host forwarded."""
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri()}
        if verifier is not None:
            data["code_verifier"] = verifier
        with self.tcp() as http:
            response = http.post("/idp/token", data=data, auth=("gateway", self.client_secret()),
                                 headers=self.forwarded())
        if response.status_code == 200:
            self.secrets_seen.extend(v for k, v in response.json().items() if k.endswith("_token"))
        return response

    def forwarded(self) -> dict[str, str]:
        """The headers the gateway sends on its back channel: the public host of the issuer."""
        split = urlsplit(self.issuer)
        return {"x-forwarded-proto": split.scheme, "x-forwarded-host": split.netloc}


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the provider exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the provider did not answer {url} in {timeout}s:\n{log.read_text()[-3000:]}")


def start_provider(env: TenantEnv, config: dict[str, Any], name: str = "identity") -> Provider:
    config_path = env.base / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=1))
    socket = config["listen"]["socket"]
    if socket:
        Path(socket).parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    server_dir = identity_server_dir()
    log = env.base / f"{name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            ["node", *NODE_FLAGS, str(server_dir / "server.mjs"), "--config", str(config_path)],
            stdout=out, stderr=subprocess.STDOUT, cwd=server_dir, env={**os.environ, **NODE_ENVIRONMENT},
        )
    provider = Provider(env, config, process, log)
    wait_ready(f"{provider.tcp_url}/idp/.well-known/openid-configuration", process, log)
    return provider




def identity_server_dir() -> Path:
    """A directory holding server.mjs, lib/ and their node_modules."""
    return node_program_dir("identity", role_files("identity"), "oidc-provider")

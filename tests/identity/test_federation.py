"""Federation (issue 17): a tenant's gateway delegates logins to the organization's issuer. Keycloak cannot be
installed here (a Java distribution outside the reachable registries), so the external issuer is a second,
separately configured oidc-provider: its own database, keys and people, served over real TLS (Caddy, a test CA)
at its own issuer URL, as an organization's IdP would be.

Claims make house roles: the houses an issuer's `roles` name are managed by its claims at every login.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.identity.issuer_secrets import issuer_secret_path
from appliance.identity.provider import callback_urls, runtime_config
from tests.support.identity import PASSWORD, Provider, start_provider
from tests.support.pg import PgCluster, pg_cluster
from tests.support.ports import free_port
from tests.support.stack import (
    InProcessGateway,
    TenantEnv,
    gateway_in_process,
    make_tenant,
    provision,
    remove_base,
    stop_process,
    temp_base,
)

# Fixed, so the tenant's settings can name it before the house exists (a test creates it with this id).
MANAGED_HOUSE = "5a1c0e9e-7b7d-4f3e-9b7a-0c2d4e6f8a10"
CORP_ADMIN_GROUP_EMAIL_DOMAIN = "corp.example"


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """(CA, certificate for 127.0.0.1, key): the organization's own PKI, as far as this test needs one."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corp test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corp")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "corp-ca.pem", directory / "corp.pem", directory / "corp.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def _tls_front(directory: Path, port: int, cert: Path, key: Path, upstream_port: int) -> subprocess.Popen[bytes]:
    """Caddy ending TLS for the external issuer (it forwards the public host and scheme, as any proxy would)."""
    caddy = shutil.which("caddy")
    assert caddy, "caddy is not installed (.ci/run installs it)"
    config = directory / "Caddyfile"
    config.write_text(
        "{\n\tadmin off\n\tauto_https off\n\tstorage file_system " + str(directory / "caddy-data") + "\n}\n"
        f"https://127.0.0.1:{port} {{\n\tbind 127.0.0.1\n\ttls {cert} {key}\n"
        f"\treverse_proxy 127.0.0.1:{upstream_port}\n}}\n")
    log = open(directory / "caddy.log", "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen([caddy, "run", "--config", str(config), "--adapter", "caddyfile"], stdout=log,
                               stderr=subprocess.STDOUT, env={"HOME": str(directory), "PATH": "/usr/bin:/bin"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"caddy exited: {(directory / 'caddy.log').read_text()[-2000:]}")
        try:
            httpx.get(f"https://127.0.0.1:{port}/idp/.well-known/openid-configuration", verify=False, timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("caddy did not answer")


class Door(httpx.BaseTransport):
    """The tenant's front door for a scripted browser: everything on the tenant's name goes to its gateway."""

    def __init__(self, gateway_url: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.gateway = httpx.URL(gateway_url)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        headers = request.headers.copy()
        headers["host"] = request.url.netloc.decode()
        target = request.url.copy_with(scheme="http", host=self.gateway.host, port=self.gateway.port)
        return self.inner.handle_request(httpx.Request(request.method, target, headers=headers,
                                                       stream=request.stream))


@dataclass
class Federation:
    corp: Provider
    corp_url: str
    ca: Path
    acme: TenantEnv
    gateway: InProcessGateway

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def browser(self) -> httpx.Client:
        corp = httpx.HTTPTransport(verify=self.tls())
        return httpx.Client(base_url=self.acme.tenant.url, timeout=30, transport=Door(self.gateway.url),
                            mounts={self.corp_url: corp})

    def login(self, email: str) -> httpx.Client:
        """Through acme's gateway to corp's login and back; the browser, holding acme's session."""
        browser = self.browser()
        start = browser.get("/api/auth/login", params={"issuer": "corp", "return_to": "/"})
        assert start.status_code == 302, start.text
        assert start.headers["location"].startswith(self.corp_url + "/idp/auth?")
        at_corp = browser.get(start.headers["location"])
        signed_in = self.corp.sign_in(browser, urljoin(self.corp_url, at_corp.headers["location"]), email, PASSWORD)
        callback = self.corp.follow(browser, signed_in, self.acme.tenant.url + "/api/auth/callback")
        done = browser.get(callback.headers["location"])
        assert done.status_code == 303, done.text
        return browser

    def me(self, browser: httpx.Client) -> dict[str, Any]:
        token = browser.post("/api/auth/refresh").json()["access_token"]
        answer = httpx.get(self.gateway.url + "/api/me", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.acme.superuser() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def federation(pg_module: PgCluster) -> Iterator[Federation]:
    base = temp_base("appliance-federation-")
    try:
        ca, cert, key = _tls_files(base)
        tls_port = free_port()
        corp_url = f"https://127.0.0.1:{tls_port}"
        acme = make_tenant(base / "acme", pg=pg_module, identity={"issuers": [{
            "name": "corp", "issuer": corp_url + "/idp", "client_id": "gateway",
            "client_secret_file": "/etc/appliance/corp.secret", "ca_file": str(ca),
            # What the IdP puts in its access tokens' `aud` for this API (a Keycloak audience mapper's job).
            "audience": "https://acme.appliance.internal",
            "roles": [{"claim": "email", "value": f"boss@{CORP_ADMIN_GROUP_EMAIL_DOMAIN}", "house": MANAGED_HOUSE,
                       "role": "admin"}],
        }]})
        provision(acme)
        with pg_cluster() as corp_pg:
            corp_env = make_tenant(base / "corp", "corp", slot=3, pg=corp_pg)
            provision(corp_env)
            config = runtime_config(corp_env.tenant)
            # The organization's IdP: its own issuer URL, and this tenant's gateway registered as its client.
            config["issuer"] = corp_url + "/idp"
            config["listen"]["socket"] = ""
            config["resource"] = acme.tenant.url
            config["form_action_origins"] = [corp_url, acme.tenant.url]
            config["clients"][0]["redirect_uris"] = callback_urls(acme.tenant)
            corp = start_provider(corp_env, config)
            front = _tls_front(base, tls_port, cert, key, corp.port)
            # What the deploy does with the operator's client_secret_file: a copy in the tenant's secrets.
            secret = issuer_secret_path(acme.tenant, acme.tenant.identity.issuers[0])
            secret.write_text(corp.client_secret())
            secret.chmod(0o600)
            try:
                with gateway_in_process(acme) as gateway:
                    yield Federation(corp, corp_url, ca, acme, gateway)
            finally:
                stop_process(front)
                stop_process(corp.process)
    finally:
        remove_base(base)


def test_a_person_of_the_organizations_issuer_logs_in_to_the_tenant(federation: Federation) -> None:
    account, email = federation.corp.add_account("worker")
    me = federation.me(federation.login(email))
    principal = uuid.UUID(me["principal_id"])
    assert federation.sql("SELECT issuer, subject FROM public.identities WHERE principal_id = %s", [principal]) == [
        (federation.corp_url + "/idp", str(account))]
    # The same subject at the tenant's own provider would be another person: identities are per issuer.
    assert federation.sql("SELECT count(*) FROM public.identities WHERE subject = %s", [str(account)]) == [(1,)]


def test_claims_grant_and_take_back_the_house_roles_they_manage(federation: Federation) -> None:
    federation.sql("INSERT INTO public.houses (id, house_id, name, created_by) VALUES (%s, %s, 'corp', %s) "
                   "ON CONFLICT DO NOTHING", [MANAGED_HOUSE, MANAGED_HOUSE, uuid.uuid4()])
    boss_email = f"boss@{CORP_ADMIN_GROUP_EMAIL_DOMAIN}"
    with federation.corp.env.superuser() as conn:
        from appliance.identity import accounts

        accounts.add(conn, federation.corp.env.tenant, boss_email, "Boss", PASSWORD)
    boss = federation.me(federation.login(boss_email))
    assert [(h["house_id"], h["role"]) for h in boss["houses"]] == [(MANAGED_HOUSE, "admin")]
    # Someone whose claims give no role there loses a membership there at their next login (the claims manage
    # that house), while their other houses are untouched.
    _, email = federation.corp.add_account("former")
    former = uuid.UUID(federation.me(federation.login(email))["principal_id"])
    own_house = uuid.uuid4()
    federation.sql("INSERT INTO public.houses (id, house_id, name, created_by) VALUES (%s, %s, 'own', %s)",
                   [own_house, own_house, former])
    for house in (MANAGED_HOUSE, own_house):
        federation.sql("INSERT INTO public.members (id, house_id, principal_id, principal_kind, role, created_by) "
                       "VALUES (%s, %s, %s, 'user', 'member', %s)", [uuid.uuid4(), house, former, former])
    after = federation.me(federation.login(email))
    assert [h["house_id"] for h in after["houses"]] == [str(own_house)]
    removed = federation.sql("SELECT actor, detail FROM audit.events WHERE action = 'member.delete' AND house_id = %s",
                             [MANAGED_HOUSE])
    assert removed and removed[-1][0] == str(former) and removed[-1][1]["by"] == "claims"


def test_the_organizations_tokens_are_bearer_tokens_and_another_issuers_are_not(federation: Federation) -> None:
    _, email = federation.corp.add_account("script")
    code, verifier, _ = federation.corp.code_flow(email, browser=httpx.Client(
        base_url=federation.corp_url, verify=federation.tls(), timeout=30))
    with httpx.Client(base_url=federation.corp_url, verify=federation.tls(), timeout=30) as corp:
        tokens = corp.post("/idp/token", data={"grant_type": "authorization_code", "code": code,
                                               "redirect_uri": federation.corp.redirect_uri(),
                                               "code_verifier": verifier},
                           auth=("gateway", federation.corp.client_secret())).json()
    me = httpx.get(federation.gateway.url + "/api/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200, me.text
    # An issuer the tenant does not list is nobody here, whatever it signs.
    answer = httpx.get(federation.gateway.url + "/api/auth/login", params={"issuer": "elsewhere"})
    assert answer.status_code == 400

"""A canned-answer Proxmox VE API over real HTTPS on loopback, for tests of single API answers.

Fixtures: ``pki`` (a test CA, another CA, a server certificate for 127.0.0.1 and its SHA-256
pin), ``api`` (the server: (Api, port)) and ``client`` (a pipeline Client trusting the CA).
Tell the server what to answer with ``Api.on(method, path suffix, (status, reason, body), ...)``.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipeline.config import TLS, Proxmox
from pipeline.proxmox import Client
from pipeline.secrets import SecretSource

UPID = "UPID:pve01:0000ABCD:00001234:65000000:vzcreate:457:pipeline@pve!lab:"
SECRET = "0f6c1c2e-token-secret-for-tests"


def _cert(name: str, issuer: tuple | None, *, ca: bool) -> tuple:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Api:
    """Canned answers by (method, path suffix); records requests."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[tuple[int, str, dict]]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.bodies: list[bytes] = []

    def on(self, method: str, suffix: str, *answers: tuple[int, str, dict]) -> None:
        self.routes[(method, suffix)] = list(answers)

    def answer(self, method: str, path: str) -> tuple[int, str, dict]:
        for (m, suffix), answers in self.routes.items():
            if m == method and path.split("?")[0].endswith(suffix):
                return answers.pop(0) if len(answers) > 1 else answers[0]
        return 501, "Not Implemented", {"data": None}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    d = tmp_path_factory.mktemp("pki")
    ca = _cert("test CA", None, ca=True)
    other_ca = _cert("other CA", None, ca=True)
    server = _cert("127.0.0.1", ca, ca=False)
    (d / "ca.pem").write_bytes(_pem(ca[0]))
    (d / "other-ca.pem").write_bytes(_pem(other_ca[0]))
    (d / "server.pem").write_bytes(_pem(server[0]))
    (d / "server.key").write_bytes(server[1].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    digest = hashlib.sha256(server[0].public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return {"dir": d, "fingerprint": ":".join(digest[i:i + 2] for i in range(0, 64, 2))}


@pytest.fixture
def api(pki: dict) -> Iterator[tuple[Api, int]]:
    state = Api()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            state.bodies.append(self.rfile.read(length))
            state.requests.append((self.command, self.path, dict(self.headers)))
            status, reason, body = state.answer(self.command, self.path)
            payload = json.dumps(body).encode() if status != 401 else b""
            self.send_response(status, reason)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["dir"] / "server.pem", pki["dir"] / "server.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, server.server_address[1]
    server.shutdown()
    server.server_close()


def proxmox_config(port: int, tls: TLS, tmp_path: Path) -> Proxmox:
    """The site's proxmox section for the canned server on ``port`` (secret SECRET in tmp_path)."""
    secret = tmp_path / "token.secret"
    secret.write_text(SECRET + "\n")
    return Proxmox(host="127.0.0.1", port=port, node="pve01", token_id="pipeline@pve!lab",
                   token_secret=SecretSource(file=secret), tls=tls, task_timeout=3)


@pytest.fixture
def client(api: tuple[Api, int], pki: dict, tmp_path: Path) -> tuple[Client, Api]:
    state, port = api
    return Client.from_site(proxmox_config(port, TLS(ca_file=pki["dir"] / "ca.pem"), tmp_path)), state

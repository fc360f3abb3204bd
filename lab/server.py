"""The HTTPS API: /api2/json/... with Proxmox's auth, validation, permission checks and shapes.

Every request: route it in the real schema (unknown path: 501 like pve-http-server),
authenticate the API token (401, empty body), validate parameters (400 with ``errors``),
run the schema's permission check (403 ``Permission check failed (/vms/457, VM.Audit)``),
then the handler (500 with its message). Success: ``{"data": ...}``. The HTTP reason
phrase carries the message too, as Proxmox's does (proxmoxer shows it).

Example::

    serve(Node(Path("/var/lib/meridian-lab")), host="127.0.0.1", port=8006)
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from lab.apischema import ApiSchema, Endpoint
from lab.errors import ApiError, forbidden
from lab.guests import Guests
from lab.handlers import HANDLERS, RequestContext
from lab.node import Node
from lab.upload import receive_upload

PREFIX = "/api2/json"
UPLOAD = "/nodes/{node}/storage/{storage}/upload"  # streamed: handled here, not in HANDLERS


class LabServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], node: Node, tls: ssl.SSLContext) -> None:
        super().__init__(address, Handler)
        self.node = node
        self.guests = Guests(node)
        self.schema = ApiSchema.load()
        self.tls = tls

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that drops the connection or refuses our CA is not a server error.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
            print(f"{client_address[0]} connection closed: {exc}", flush=True)
        else:
            super().handle_error(request, client_address)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # The handshake happens in the request's thread: a slow client cannot stall the others.
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LabServer
    _reason: str | None = None  # the error text of the answer being made (its reason phrase)

    def log_message(self, format: str, *args: Any) -> None:
        # Never the Authorization header; the request line has no secrets.
        print(f"{self.address_string()} {format % args}", flush=True)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            status, data = 200, self._handle(method)
            body: dict[str, Any] | None = {"data": data}
        except ApiError as exc:
            status, body = exc.status, _error_body(exc)
            self._reason = exc.message
        except Exception as exc:  # a lab bug: answer 500 and keep serving
            traceback.print_exc()
            status, body = 500, {"data": None, "message": f"lab internal error: {exc}\n"}
            self._reason = f"lab internal error: {exc}"
        self._answer(status, body)

    def _answer(self, status: int, body: dict[str, Any] | None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        reason = self._reason
        self.send_response(status, _reason_phrase(reason) if reason else None)
        if payload:
            self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "max-age=0")
        self.end_headers()
        self.wfile.write(payload)
        self._reason = None

    def _handle(self, method: str) -> Any:
        url = urlsplit(self.path)
        if not url.path.startswith(PREFIX + "/"):
            raise ApiError(501, f"Unexpected content for path '{url.path}'")
        path = unquote(url.path[len(PREFIX):]).rstrip("/") or "/"
        endpoint, path_params, known = self.server.schema.route(method, path)
        user = self.server.node.access.authenticate(self.headers.get("Authorization"))
        if user is None:
            self._drain()
            raise ApiError(401, "authentication failure")
        if endpoint is None or (endpoint.method, endpoint.path) not in {*HANDLERS, ("POST", UPLOAD)}:
            self._drain()
            verb = "Method" if known else "Path"
            raise ApiError(501, f"{verb} '{method} {path}' not implemented")
        raw = {**dict(parse_qsl(url.query, keep_blank_values=True)), **path_params}
        if endpoint.path == UPLOAD:
            return self._upload(endpoint, raw, user)
        raw.update(self._form())
        params = endpoint.validate(raw)
        check_permissions(self.server.node, endpoint, params, user)
        ctx = RequestContext(self.server.node, self.server.guests, user)
        return HANDLERS[(endpoint.method, endpoint.path)](ctx, params)

    def _upload(self, endpoint: Endpoint, raw: dict[str, str], user: str) -> Any:
        # Permissions before the body: a refused upload does not write hundreds of MiB first.
        endpoint.validate({**raw, "content": "vztmpl", "filename": "x.tar"})
        check_permissions(self.server.node, endpoint, {**raw}, user)
        ctx = RequestContext(self.server.node, self.server.guests, user)
        return receive_upload(ctx, endpoint, raw, self.headers, self.rfile)  # type: ignore[arg-type]  # a BufferedReader

    def _length(self) -> int:
        return int(self.headers.get("Content-Length") or 0)

    def _drain(self) -> None:
        """Read an unread body so the kept-alive connection stays in sync (bounded by its length)."""
        remaining = self._length()
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

    def _form(self) -> dict[str, str]:
        length = self._length()
        if not length:
            return {}
        body = self.rfile.read(length).decode()
        if self.headers.get_content_type() == "application/json":
            return {k: str(v) for k, v in json.loads(body).items()}
        return dict(parse_qsl(body, keep_blank_values=True))


def _error_body(exc: ApiError) -> dict[str, Any] | None:
    if exc.status == 401:
        return None
    body: dict[str, Any] = {"data": None, "message": exc.message.rstrip("\n") + "\n"}
    if exc.errors is not None:
        body["errors"] = exc.errors
    return body


def _reason_phrase(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else "error"
    return line.encode("latin-1", "replace").decode("latin-1")


def check_permissions(node: Node, endpoint: Endpoint, params: dict[str, Any], user: str) -> None:
    """Evaluate the schema's ``check`` as pve-access-control's exec_api2_perm_check does:
    ``and`` fails at its first failing part with that part's error, ``or`` with a bare
    "Permission check failed", ``perm`` with "(path, priv)" ("(path, A|B)" for ``any``)."""
    check = endpoint.permissions.get("check")
    if check:
        _exec_check(node, check, params, user, noerr=False)


def _exec_check(node: Node, check: list, params: dict[str, Any], user: str, noerr: bool) -> bool:
    kind = check[0]
    if kind == "and":
        # Proxmox runs the parts without noerr: a failing part raises even inside an "or".
        return all(_exec_check(node, part, params, user, noerr=False) for part in check[1:])
    if kind == "or":
        if any(_exec_check(node, part, params, user, noerr=True) for part in check[1:]):
            return True
        if noerr:
            return False
        raise ApiError(403, "Permission check failed")
    if kind == "perm":
        options = dict(zip(check[3::2], check[4::2], strict=False))
        required = options.get("require_param")
        if required and params.get(required) is None:
            if noerr:
                return False
            raise ApiError(403, "Permission check failed")
        path, privs, any_of = _fill(check[1], params), check[2], bool(options.get("any"))
        missing = node.access.missing(user, path, privs, any_of=any_of)
        if missing is None:
            return True
        if noerr:
            return False
        raise forbidden(path, "|".join(privs) if any_of else missing)
    if noerr:
        return False
    raise ApiError(403, "Permission check failed")  # a check kind the lab does not know: refuse


def _fill(path: str, params: dict[str, Any]) -> str:
    for key, value in params.items():
        path = path.replace("{" + key + "}", str(value))
    return path


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def serve(node: Node, host: str, port: int, tls: ssl.SSLContext,
          ready: Callable[[], None] | None = None) -> None:
    server = LabServer((host, port), node, tls)
    node.tasks.recover()
    node.storages.purge_trash()
    if ready:
        ready()
    server.serve_forever(poll_interval=0.5)

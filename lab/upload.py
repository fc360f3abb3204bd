"""POST /nodes/{node}/storage/{storage}/upload: a streamed multipart body, checked in a task.

As in Proxmox, the fields ``content``, ``checksum-algorithm`` and ``checksum`` come before
the file part (named ``filename``); the file is streamed to a temporary file in the
storage (never held in memory), and the ``imgcopy`` task verifies the checksum and moves
it into place (silently replacing a file of the same name).
"""

from __future__ import annotations

import hashlib
import os
import re
from email.message import Message
from pathlib import Path
from typing import IO, Any

from lab.apischema import Endpoint
from lab.errors import ApiError, param_error
from lab.tasks import TaskFailed, TaskLog

CHUNK = 1 << 20
FIELD_LIMIT = 64 * 1024


class Body:
    """The request body, bounded by Content-Length, with look-ahead for the boundary search."""

    def __init__(self, stream: IO[bytes], length: int) -> None:
        self.stream = stream
        self.remaining = length
        self.buf = b""

    def fill(self) -> bool:
        if self.remaining <= 0:
            return False
        chunk = self.stream.read(min(CHUNK, self.remaining))
        if not chunk:
            self.remaining = 0
            return False
        self.remaining -= len(chunk)
        self.buf += chunk
        return True

    def read_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > FIELD_LIMIT or not self.fill():
                raise ApiError(400, "malformed multipart body")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def copy_until(self, delimiter: bytes, sink: IO[bytes] | None, limit: int | None = None) -> None:
        """Move bytes to sink up to the delimiter (consumed); bounded by limit when given."""
        written = 0
        while True:
            at = self.buf.find(delimiter)
            if at >= 0:
                if sink is not None:
                    sink.write(self.buf[:at])
                self.buf = self.buf[at + len(delimiter):]
                return
            keep = len(delimiter)
            if len(self.buf) > keep:
                head, self.buf = self.buf[:-keep], self.buf[-keep:]
                written += len(head)
                if limit is not None and written > limit:
                    raise ApiError(400, "multipart field too large")
                if sink is not None:
                    sink.write(head)
            if not self.fill():
                raise ApiError(400, "malformed multipart body: missing closing boundary")

    def drain(self) -> None:
        self.buf = b""
        while self.fill():
            self.buf = b""


def receive_upload(ctx: Any, endpoint: Endpoint, raw: dict[str, str], headers: Message,
                   stream: IO[bytes]) -> str:
    body = Body(stream, int(headers.get("Content-Length") or 0))
    try:
        return _receive(ctx, endpoint, raw, headers, body)
    finally:
        body.drain()


def _receive(ctx: Any, endpoint: Endpoint, raw: dict[str, str], headers: Message, body: Body) -> str:
    boundary = headers.get_param("boundary") if headers.get_content_type() == "multipart/form-data" else None
    if not boundary:
        raise param_error({"filename": "upload needs a multipart/form-data body"})
    delimiter = b"\r\n--" + str(boundary).encode()
    body.copy_until(delimiter[2:], None, limit=FIELD_LIMIT)
    fields: dict[str, str] = {}
    while body.read_line() != b"--":
        name, filename = _disposition(body)
        if name != "filename":
            value = _field(body, delimiter)
            fields[name] = value
            continue
        params = endpoint.validate({**raw, **fields, "filename": filename or ""})
        return _store_file(ctx, params, body, delimiter)
    raise param_error({"filename": "property is missing and it is not optional"})


def _disposition(body: Body) -> tuple[str, str | None]:
    headers = []
    while line := body.read_line():
        headers.append(line.decode("utf-8", "replace"))
    text = "\n".join(headers)
    name = re.search(r'\bname="([^"]*)"', text)
    filename = re.search(r'\bfilename="([^"]*)"', text)
    if not name:
        raise ApiError(400, "malformed multipart body: a part without a name")
    return name[1], (Path(filename[1]).name if filename else None)


def _field(body: Body, delimiter: bytes) -> str:
    class Collect(list):
        def write(self, data: bytes) -> None:
            self.append(data)
    sink = Collect()
    body.copy_until(delimiter, sink, limit=FIELD_LIMIT)  # type: ignore[arg-type]
    return b"".join(sink).decode()


def _store_file(ctx: Any, params: dict[str, Any], body: Body, delimiter: bytes) -> str:
    storages = ctx.node.storages
    storage = params["storage"]
    if not storages.exists(storage):
        raise ApiError(500, f"storage '{storage}' does not exist")
    if bool(params.get("checksum")) != bool(params.get("checksum-algorithm")):
        raise param_error({"checksum": "checksum and checksum-algorithm go together"})
    try:
        target = storages.upload_target(storage, params["content"], params["filename"])
    except ValueError as exc:
        raise param_error({"filename": str(exc)}) from None
    tmp = target.with_name(storages.tmp_name())
    with open(tmp, "wb") as sink:
        body.copy_until(delimiter, sink)

    def work(log: TaskLog) -> None:
        _import(tmp, target, params, log)
    return ctx.node.tasks.start("imgcopy", "", ctx.user, work)  # Proxmox gives it no id


def _import(tmp: Path, target: Path, params: dict[str, Any], log: TaskLog) -> None:
    try:
        log.line(f"starting file import from: {tmp}")
        algorithm = params.get("checksum-algorithm")
        if algorithm:
            log.line(f"calculating checksum of '{tmp}'...")
            got = _checksum(tmp, algorithm)
            expected = params["checksum"].strip().lower()
            if got != expected:
                raise TaskFailed(f"checksum mismatch: got '{got}' != expect '{expected}'")
            log.line("checksum verified")
        log.line(f"target node: {params['node']}")
        log.line(f"target file: {target}")
        log.line(f"file size is: {tmp.stat().st_size}")
        os.replace(tmp, target)
        log.line("finished file import successfully")
    finally:
        tmp.unlink(missing_ok=True)


def _checksum(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

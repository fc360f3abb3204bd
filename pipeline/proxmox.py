"""A small typed client for the Proxmox VE API, on proxmoxer (https backend, API token).

TLS is always verified: against the site's CA file, or by pinning the certificate's
SHA-256 fingerprint. Every task is waited for with a bounded timeout; a task that
ends with anything but ``OK`` or ``WARNINGS: N`` raises with the tail of its log.

Example::

    px = Client.from_site(site.proxmox)
    upid = px.start(457)
    px.wait_task(upid, what="start CT 457")
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from proxmoxer import ProxmoxAPI, ResourceException
from requests.adapters import HTTPAdapter

from pipeline.config import Proxmox
from pipeline.errors import PipelineError
from pipeline.polling import T, wait_until

REQUEST_TIMEOUT = (10, 60)  # (connect, read) seconds for ordinary calls
UPLOAD_TIMEOUT = (10, 3600)  # a template is hundreds of MiB: proxmoxer's 5 s default is far too short
# Task polls: every 0.05 s for the first seconds (the tasks inside a replace's downtime window take
# 0.5-2 s each, and every poll of slack is downtime), then backing off to 1 s for long tasks.
POLL_FIRST_SECONDS = 0.05
POLL_FAST_FOR_SECONDS = 3.0
POLL_MAX_SECONDS = 1.0
LOG_TAIL = 15


def poll(check: Callable[[], T], timeout: float) -> T | None:
    """Poll a task's progress on the schedule above (pipeline/polling.py)."""
    return wait_until(check, timeout=timeout, pause=POLL_FIRST_SECONDS, slower_after=POLL_FAST_FOR_SECONDS,
                      max_pause=POLL_MAX_SECONDS)


class ProxmoxError(PipelineError):
    """An API call failed: HTTP status, reason and the per-field errors Proxmox returned."""

    def __init__(
        self, message: str, *, status: int | None = None, reason: str = "",
        errors: dict[str, str] | None = None, hint: str | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.status = status
        self.reason = reason
        self.errors = errors or {}


class TaskError(ProxmoxError):
    """A task ended with an error status, or did not end in time. Carries the log's tail."""

    def __init__(self, message: str, *, upid: str, exitstatus: str | None, log: list[str]) -> None:
        shown = message + ("\n  task log (tail):\n    " + "\n    ".join(log) if log else "")
        super().__init__(shown)
        self.upid = upid
        self.exitstatus = exitstatus
        self.log = log


def task_succeeded(exitstatus: str | None) -> bool:
    """``OK`` and ``WARNINGS: N`` are success (systemd in a CT often warns)."""
    return exitstatus == "OK" or (exitstatus or "").startswith("WARNINGS:")


def upid_node(upid: str) -> str:
    """The node a task runs on: ``UPID:pve01:...`` -> ``pve01``."""
    parts = upid.split(":")
    if len(parts) < 3 or parts[0] != "UPID":
        raise ProxmoxError(f"Proxmox returned {upid!r}, which is not a task id (UPID:...)")
    return parts[1]


class PinnedFingerprintAdapter(HTTPAdapter):
    """Verify the server by its certificate's SHA-256 fingerprint instead of a CA chain.

    Proxmox's self-signed API certificate has no CA the client can know; pinning its
    fingerprint (``pvenode cert info``) is as strict as a CA check, and stricter than
    trust-on-first-use. urllib3 compares the pin on every new connection.
    """

    def __init__(self, fingerprint: str) -> None:
        self._pin = fingerprint.replace(":", "").lower()
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self._pin
        super().init_poolmanager(*args, **kwargs)

    def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None) -> Any:
        # The chain check is replaced (not dropped) by the fingerprint assertion above.
        return super().build_connection_pool_key_attributes(request, False, cert)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, False, cert)


class Client:
    """The calls the replace needs, each turning proxmoxer failures into ProxmoxError."""

    def __init__(self, cfg: Proxmox, token_secret: str) -> None:
        self.cfg = cfg
        self.node = cfg.node
        self._secret = token_secret
        self._api = self._connect(REQUEST_TIMEOUT)
        self._upload_api = self._connect(UPLOAD_TIMEOUT)

    @classmethod
    def from_site(cls, cfg: Proxmox) -> Client:
        return cls(cfg, cfg.token_secret.read(label="proxmox.token_secret"))

    @property
    def url(self) -> str:
        return f"https://{self.cfg.host}:{self.cfg.port}"

    def _connect(self, timeout: tuple[int, int]) -> ProxmoxAPI:
        user, token_name = self.cfg.token_id.split("!", 1)
        tls = self.cfg.tls
        api = ProxmoxAPI(
            self.cfg.host, port=self.cfg.port, user=user, token_name=token_name,
            token_value=self._secret, timeout=timeout,
            verify_ssl=str(tls.ca_file) if tls.ca_file else True,
        )
        if tls.fingerprint:
            # proxmoxer has no hook for a custom adapter; its session lives in _store.
            api._store["session"].mount("https://", PinnedFingerprintAdapter(tls.fingerprint))
        return api

    # -- error translation -------------------------------------------------------------

    def call(self, what: str, fn: Callable[[ProxmoxAPI], Any], *, upload: bool = False) -> Any:
        """Run ``fn(api)``; any failure becomes a ProxmoxError that starts with ``what``."""
        try:
            return fn(self._upload_api if upload else self._api)
        except ResourceException as exc:
            raise self._resource_error(what, exc) from None
        except requests.exceptions.SSLError as exc:
            raise ProxmoxError(
                f"{what}: TLS verification of {self.url} failed: {_first_line(exc)}",
                hint="check proxmox.tls.ca_file or proxmox.tls.fingerprint in the site file",
            ) from None
        except requests.exceptions.Timeout:
            raise ProxmoxError(f"{what}: {self.url} did not answer in time") from None
        except requests.exceptions.ConnectionError as exc:
            raise ProxmoxError(
                f"{what}: cannot reach the Proxmox API at {self.url}: {_first_line(exc)}",
                hint="check proxmox.host and proxmox.port, and that the API is up",
            ) from None

    def _resource_error(self, what: str, exc: ResourceException) -> ProxmoxError:
        status = int(exc.status_code)
        reason = str(exc.content or exc.status_message or "").strip()
        errors = exc.errors if isinstance(exc.errors, dict) else {}
        errors = {k: str(v).strip() for k, v in errors.items() if k != "errors"}
        hint = None
        if status == 401:
            reason = f"authentication failed for API token {self.cfg.token_id}"
            hint = f"check the token secret ({self.cfg.token_secret.describe()}) and that the token exists"
        elif status == 403:
            hint = f"grant {self.cfg.token_id} the missing privilege (on the pool, not on /vms/<id>)"
        detail = "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
        message = f"{what}: Proxmox answered {status}: {reason}" + (f" ({detail})" if detail else "")
        return ProxmoxError(message, status=status, reason=reason, errors=errors, hint=hint)

    # -- reads -------------------------------------------------------------------------

    def nodes(self) -> list[str]:
        return [n["node"] for n in self.call("list nodes", lambda a: a.nodes.get())]

    def storages(self) -> list[dict[str, Any]]:
        return self.call(f"list storages on node {self.node}", lambda a: a.nodes(self.node).storage.get())

    def storage_content(self, storage: str, content: str) -> list[dict[str, Any]]:
        return self.call(
            f"list {content} on storage {storage}",
            lambda a: a.nodes(self.node).storage(storage).content.get(content=content),
        )

    def delete_volume(self, storage: str, volid: str) -> str:
        """DELETE .../storage/{storage}/content/{volume} (needs Datastore.Allocate there)."""
        return self.call(f"delete {volid}", lambda a: a.nodes(self.node).storage(storage).content(volid).delete())

    def containers(self) -> list[dict[str, Any]]:
        return self.call(f"list containers on node {self.node}", lambda a: a.nodes(self.node).lxc.get())

    def ct_config(self, vmid: int) -> dict[str, Any]:
        return self.call(f"read config of CT {vmid}", lambda a: a.nodes(self.node).lxc(vmid).config.get())

    def storage_type(self, storage: str) -> str:
        """The storage plugin type (dir, lvmthin, zfspool, rbd, ...) or "" when not listed."""
        return next((str(s.get("type", "")) for s in self.storages() if s.get("storage") == storage), "")

    # -- tasks (each returns a UPID) -----------------------------------------------------

    def upload_template(self, storage: str, path: Path, name: str, sha256: str) -> str:
        def post(api: ProxmoxAPI) -> str:
            # proxmoxer names the multipart file after the file object's name: make it ``name``.
            raw = io.FileIO(path, "r")
            raw.name = name
            with io.BufferedReader(raw) as fh:
                fields = {"checksum-algorithm": "sha256", "checksum": sha256}
                return api.nodes(self.node).storage(storage).upload.post(
                    content="vztmpl", filename=fh, **fields
                )
        return self.call(f"upload {name} to storage {storage}", post, upload=True)

    def create_ct(self, vmid: int, params: dict[str, Any]) -> str:
        return self.call(f"create CT {vmid}", lambda a: a.nodes(self.node).lxc.post(vmid=vmid, **params))

    def clone_ct(self, vmid: int, newid: int, params: dict[str, Any]) -> str:
        """POST .../clone: a linked clone by default when ``vmid`` is a template."""
        return self.call(f"clone CT {vmid} to CT {newid}",
                         lambda a: a.nodes(self.node).lxc(vmid).clone.post(newid=newid, **params))

    def convert_to_template(self, vmid: int) -> None:
        """POST .../template. Proxmox answers null and converts in a background task: poll the
        config until it says ``template: 1`` (bounded by the task timeout)."""
        self.call(f"convert CT {vmid} to a template", lambda a: a.nodes(self.node).lxc(vmid).template.post())
        if poll(lambda: str(self.ct_config(vmid).get("template", "0")) == "1", self.cfg.task_timeout):
            return
        raise ProxmoxError(f"CT {vmid} is not a template {self.cfg.task_timeout}s after the conversion "
                           "was asked for", hint=f"see the vztemplate task of CT {vmid} in the task log")

    def update_config(self, vmid: int, params: dict[str, Any]) -> None:
        self.call(f"update config of CT {vmid}", lambda a: a.nodes(self.node).lxc(vmid).config.put(**params))

    def start(self, vmid: int) -> str:
        return self.call(f"start CT {vmid}", lambda a: a.nodes(self.node).lxc(vmid).status.start.post())

    def shutdown(self, vmid: int, timeout: int) -> str:
        return self.call(
            f"shut down CT {vmid}",
            lambda a: a.nodes(self.node).lxc(vmid).status.shutdown.post(timeout=timeout, forceStop=1),
        )

    def move_volume(self, vmid: int, volume: str, target_vmid: int) -> str:
        return self.call(
            f"move {volume} of CT {vmid} to CT {target_vmid}",
            lambda a: a.nodes(self.node).lxc(vmid).move_volume.post(
                volume=volume, **{"target-vmid": target_vmid, "target-volume": volume}
            ),
        )

    def delete_ct(self, vmid: int) -> str:
        # purge=1 only: destroy-unreferenced-disks would also free volumes that merely carry
        # this VMID in their name, which is how a parked credentials volume could be lost.
        return self.call(f"delete CT {vmid}", lambda a: a.nodes(self.node).lxc(vmid).delete(purge=1))

    def wait_task(self, upid: str, *, what: str, timeout: float | None = None) -> str:
        """Wait for a task; return its exit status, or raise TaskError (failed or timed out)."""
        timeout = timeout or self.cfg.task_timeout
        node = upid_node(upid)

        def stopped() -> dict[str, Any] | None:
            status = self.call(f"{what}: read task status", lambda a: a.nodes(node).tasks(upid).status.get())
            return status if status.get("status") == "stopped" else None

        status = poll(stopped, timeout)
        if status is None:
            raise TaskError(
                f"{what}: task still running after {timeout:.0f}s ({upid})", upid=upid, exitstatus=None,
                log=self.task_log(upid),
            )
        exitstatus = status.get("exitstatus")
        if task_succeeded(exitstatus):
            return str(exitstatus)
        raise TaskError(f"{what} failed: {exitstatus}", upid=upid, exitstatus=exitstatus, log=self.task_log(upid))

    def task_log(self, upid: str) -> list[str]:
        """The last lines of a task's log (best effort: an unreadable log is not a second error)."""
        node = upid_node(upid)
        try:
            lines = self.call("read task log", lambda a: a.nodes(node).tasks(upid).log.get(limit=5000))
        except ProxmoxError:
            return []
        return [str(line.get("t", "")) for line in lines][-LOG_TAIL:]


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]

"""API tokens, ACLs and pools, kept in STATE/access.json (0600; secrets only as SHA-256).

ACLs are simple: path -> role, inherited downwards (``/vms`` covers ``/vms/457``), and a
pool's ACL covers the guests in that pool, as Proxmox propagates them.

Example::

    acc = Access(state / "access.json")
    secret = acc.add_token("pipeline@pve!lab", [("/pool/meridian", "PVEVMAdmin")])
    acc.authenticate("PVEAPIToken=pipeline@pve!lab=" + secret)   # -> "pipeline@pve!lab"
    acc.missing("pipeline@pve!lab", "/vms/457", ["VM.PowerMgmt"])  # -> None when allowed
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

import yaml

ROLES: dict[str, list[str]] = yaml.safe_load((Path(__file__).parent / "data" / "roles.yml").read_text())
TOKEN_ID = re.compile(r"[^@!\s]+@[^@!\s]+![A-Za-z][A-Za-z0-9._-]*")
HEADER = re.compile(r"PVEAPIToken=(?P<token>[^=\s]+)[=:](?P<secret>\S+)")


class Access:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _load(self) -> dict:
        if not self.path.exists():
            return {"tokens": {}, "pools": {}}
        return json.loads(self.path.read_text())

    def _save(self, data: dict) -> None:
        draft = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(draft, self.path)

    def add_token(self, token_id: str, acl: Iterable[tuple[str, str]]) -> str:
        """Create or replace a token with its ACL; returns the new secret (shown once)."""
        if not TOKEN_ID.fullmatch(token_id):
            raise ValueError(f"token id {token_id!r} is not USER@REALM!TOKENID")
        unknown = [role for _, role in acl if role not in ROLES]
        if unknown:
            raise ValueError(f"unknown role {unknown[0]!r} (known: {', '.join(ROLES)})")
        secret = str(uuid.uuid4())  # Proxmox token secrets are UUIDs
        with self._lock:
            data = self._load()
            data["tokens"][token_id] = {
                "secret_sha256": _hash(secret),
                "acl": [{"path": path, "role": role} for path, role in acl],
            }
            self._save(data)
        return secret

    def set_acl(self, token_id: str, acl: Iterable[tuple[str, str]]) -> None:
        """Give an existing token exactly this ACL (its secret stays)."""
        with self._lock:
            data = self._load()
            data["tokens"][token_id]["acl"] = [{"path": path, "role": role} for path, role in acl]
            self._save(data)

    def ensure_pool(self, pool: str) -> None:
        with self._lock:
            data = self._load()
            data["pools"].setdefault(pool, [])
            self._save(data)

    def authenticate(self, header: str | None) -> str | None:
        """The token id when the Authorization header carries a valid token, else None."""
        match = HEADER.fullmatch((header or "").strip())
        if not match:
            return None
        token = self._load()["tokens"].get(match["token"])
        if token and hmac.compare_digest(token["secret_sha256"], _hash(match["secret"])):
            return match["token"]
        return None

    def privileges(self, token_id: str, path: str) -> set[str]:
        data = self._load()
        acl = data["tokens"].get(token_id, {}).get("acl", [])
        covering = _ancestors(path) | self._pool_paths(data, path)
        return {priv for entry in acl if entry["path"] in covering for priv in ROLES[entry["role"]]}

    def missing(self, token_id: str, path: str, privs: Iterable[str], any_of: bool = False) -> str | None:
        """The first privilege the token lacks on path (None when the check passes)."""
        have = self.privileges(token_id, path)
        privs = list(privs)
        if any_of:
            return None if have & set(privs) else privs[0]
        return next((p for p in privs if p not in have), None)

    def pool_of(self, vmid: int) -> str | None:
        return next((p for p, members in self._load()["pools"].items() if vmid in members), None)

    def pool_exists(self, pool: str) -> bool:
        return pool in self._load()["pools"]

    def set_pool(self, vmid: int, pool: str | None) -> None:
        """Put a guest in a pool (None: take it out of every pool, as DELETE with purge does)."""
        with self._lock:
            data = self._load()
            for members in data["pools"].values():
                if vmid in members:
                    members.remove(vmid)
            if pool is not None:
                data["pools"].setdefault(pool, []).append(vmid)
            self._save(data)

    @staticmethod
    def _pool_paths(data: dict, path: str) -> set[str]:
        match = re.fullmatch(r"/vms/(\d+)", path)
        if not match:
            return set()
        return {f"/pool/{p}" for p, members in data["pools"].items() if int(match[1]) in members}


def _ancestors(path: str) -> set[str]:
    parts = path.strip("/").split("/")
    return {"/"} | {"/" + "/".join(parts[: i + 1]) for i in range(len(parts))}


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()

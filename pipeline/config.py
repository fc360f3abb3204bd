"""The site model: one validated, frozen description of an appliance and where it runs.

Every setting is declared once below (type, default, help). ``load_site`` reads a YAML
site file (sites/*.yml) into it; any problem exits with file, dotted key and value.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from pipeline.errors import ConfigError
from pipeline.schema import load, setting
from pipeline.secrets import SecretSource


def _template_vmids(value: list[int]) -> str | None:
    if len(value) < 3 or len(set(value)) != len(value):
        return "needs at least 3 distinct CTIDs (current, previous and next template)"
    return next((f"holds {v}, which {_vmid(v)}" for v in value if _vmid(v)), None)


def _vmid(value: int) -> str | None:
    return None if 100 <= value <= 999_999_999 else "is not a Proxmox VMID (100..999999999)"


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "is not a TCP port"


def _positive(value: int) -> str | None:
    return None if value > 0 else "must be positive"


def _hostname(value: str) -> str | None:
    ok = re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", value)
    return None if ok else "is not a valid hostname (lower-case letters, digits, '-')"


def _cidr(value: str) -> str | None:
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        return "is not an address with prefix length, like 192.0.2.10/24"
    return None if "/" in value and iface.version == 4 else "needs an IPv4 address with /prefix"


def _ip(value: str) -> str | None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return "is not an IPv4 address"
    return None


def _ssh_keys(values: tuple[str, ...]) -> str | None:
    for key in values:
        if not re.match(r"(ssh-(ed25519|rsa)|ecdsa-sha2-nistp\d+|sk-ssh-ed25519@openssh.com) \S+", key):
            return "holds a line that is not an OpenSSH public key"
    return None if values else "must list at least one key"


def _user(value: str) -> str | None:
    ok = re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value)
    reserved = {"root", "meridian", "litellm", "prometheus"}
    if not ok:
        return "is not a valid user name"
    return "is reserved for the appliance's own services" if value in reserved else None


def _aliases(values: tuple[str, ...]) -> str | None:
    if not values:
        return "must list at least one model"
    if len(set(values)) != len(values):
        return "lists a model twice"
    return None


def _fingerprint(value: str) -> str | None:
    ok = re.fullmatch(r"([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}", value)
    return None if ok else "is not a SHA-256 fingerprint (32 hex pairs separated by ':')"


@dataclass(frozen=True, kw_only=True)
class TLS:
    ca_file: Path | None = setting(None, "PEM CA that signed the Proxmox API certificate")
    fingerprint: str | None = setting(
        None, "SHA-256 fingerprint of the API certificate (pvenode cert info)", check=_fingerprint
    )

    def problem(self) -> str | None:
        if bool(self.ca_file) == bool(self.fingerprint):
            return "give exactly one of ca_file or fingerprint (TLS is always verified)"
        return None


@dataclass(frozen=True, kw_only=True)
class Proxmox:
    host: str = setting(help="Proxmox API host name or address")
    node: str = setting(help="Proxmox node that runs the container, e.g. pve01")
    token_id: str = setting(help="API token id, USER@REALM!TOKENID")
    token_secret: SecretSource = setting(help="where the API token secret comes from")
    tls: TLS = setting(help="how the API certificate is verified")
    port: int = setting(8006, "Proxmox API port", check=_port)
    template_storage: str = setting("local", "storage for vztmpl uploads")
    rootfs_storage: str = setting("local-lvm", "storage for the container's root disk")
    volume_storage: str = setting("local-lvm", "storage for the credentials volume")
    pool: str | None = setting(None, "resource pool the token is granted on (recommended)")
    task_timeout: int = setting(900, "seconds to wait for any one Proxmox task", check=_positive)

    def problem(self) -> str | None:
        if not re.fullmatch(r"[^@!\s]+@[^@!\s]+![A-Za-z][A-Za-z0-9._-]*", self.token_id):
            return f"token_id {self.token_id!r} is not USER@REALM!TOKENID"
        return None


@dataclass(frozen=True, kw_only=True)
class Network:
    bridge: str = setting("vmbr0", "Proxmox bridge for net0")
    address: str = setting(help="the container's IPv4 address with prefix", check=_cidr)
    gateway: str | None = setting(None, "default gateway", check=_ip)
    nameserver: str | None = setting(None, "DNS server written by Proxmox", check=_ip)

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)


@dataclass(frozen=True, kw_only=True)
class Container:
    vmid: int = setting(help="the container's CTID", check=_vmid)
    holder_vmid: int = setting(
        help="never-started CT that holds the credentials volume during a replace", check=_vmid
    )
    template_vmids: list[int] = setting(
        [9458, 9459, 9460],
        "CTIDs for the CT templates the container is cloned from (the current one, the previous "
        "one for a rollback, and the next one being prepared)", check=_template_vmids,
    )
    hostname: str = setting(help="container host name", check=_hostname)
    network: Network = setting(help="net0")
    cores: int = setting(2, "CPU cores", check=_positive)
    memory_mib: int = setting(2048, "memory limit in MiB", check=_positive)
    swap_mib: int = setting(512, "swap limit in MiB")
    rootfs_gib: int = setting(8, "root disk size in GiB", check=_positive)
    credentials_gib: int = setting(1, "size of the credentials volume (mp0) in GiB", check=_positive)
    timezone: str = setting("Etc/UTC", "time zone (tz database name)")
    onboot: bool = setting(True, "start the container when the node boots")

    def problem(self) -> str | None:
        if self.vmid == self.holder_vmid:
            return "holder_vmid must differ from vmid"
        if {self.vmid, self.holder_vmid} & set(self.template_vmids):
            return "template_vmids must differ from vmid and holder_vmid"
        return None


@dataclass(frozen=True, kw_only=True)
class Admin:
    user: str = setting(help="admin login (sudo without password)", check=_user)
    ssh_keys: list[str] = setting(help="authorized OpenSSH public keys", check=_ssh_keys)


@dataclass(frozen=True, kw_only=True)
class Services:
    meridian_port: int = setting(3456, "Meridian (Anthropic format) port", check=_port)
    litellm_port: int = setting(4000, "LiteLLM (OpenAI format) port", check=_port)
    node_exporter_port: int = setting(9100, "node_exporter metrics port", check=_port)

    def problem(self) -> str | None:
        ports = [self.meridian_port, self.litellm_port, self.node_exporter_port]
        return "the three ports must differ" if len(set(ports)) != 3 else None


@dataclass(frozen=True, kw_only=True)
class LiteLLM:
    master_key: SecretSource = setting(help="where the LiteLLM master key comes from")
    max_tokens: int = setting(4096, "default max_tokens sent upstream", check=_positive)


@dataclass(frozen=True, kw_only=True)
class MeridianSource:
    source: str = setting(
        help="npm spec (e.g. @rynfar/meridian@1.40.0) or a path to a package folder or .tgz"
    )
    lockfile: Path = setting(help="package-lock.json that locks the whole npm tree")

    @property
    def is_path(self) -> bool:
        return self.source.startswith(("/", "./", "../"))


@dataclass(frozen=True, kw_only=True)
class Image:
    name: str = setting("meridian", "template name prefix: NAME_VERSION_amd64.tar.zst", check=_hostname)
    meridian: MeridianSource = setting(help="where Meridian is installed from")


@dataclass(frozen=True, kw_only=True)
class Site:
    name: str = setting(help="site name (state directory, reports)", check=_hostname)
    kind: Literal["proxmox", "lab"] = setting("proxmox", "a real Proxmox VE host, or the local lab")
    proxmox: Proxmox = setting(help="the Proxmox API and storages")
    container: Container = setting(help="the container")
    admin: Admin = setting(help="the admin user")
    models: list[str] = setting(help="model aliases served on both endpoints", check=_aliases)
    litellm: LiteLLM = setting(help="LiteLLM settings")
    image: Image = setting(help="what goes into the template")
    services: Services = setting(Services(), "service ports")
    state_dir: Path = setting(
        Path("/var/lib/meridian-pipeline"), "where journals, reports and the deploy key live"
    )
    source_file: Path | None = setting(None, "(set by the loader)")

    @property
    def site_state_dir(self) -> Path:
        return self.state_dir / self.name


def load_site(path: str | Path) -> Site:
    """Read and validate a site file. Raises ConfigError naming file, key and value."""
    path = Path(path)
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if isinstance(data, dict) and "source_file" in data:
        raise ConfigError(f"{where}: source_file: unknown key")
    if isinstance(data, dict):
        data = {**data, "source_file": str(path.resolve())}
    return load(Site, data, where=where, base=path.resolve().parent)

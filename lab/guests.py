"""Containers of the lab node: config files, locks, and the lifecycle tasks (pve-container semantics).

Each CT is STATE/etc/pve/lxc/VMID.conf plus an LXC container named VMID in STATE/lxc whose
rootfs is its rootfs volume. Handlers check and answer at once (500 ``CT is locked
(create)``); the work runs as a task and ends with its exit status.

Example::

    guests = Guests(node)
    upid = guests.create({"vmid": 457, "ostemplate": "local:vztmpl/t.tar.zst", ...}, user)
    upid = guests.start(457, user)
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import threading
from pathlib import Path
from typing import Any

from lab import ctsetup, lxc
from lab.errors import ApiError, forbidden, param_error
from lab.node import Node
from lab.pveconf import digest, format_props, parse_props, read_conf, write_conf
from lab.tasks import TaskFailed, TaskLog

NEW_VOLUME = re.compile(r"(?P<storage>[a-z][a-z0-9\-_.]*[a-z0-9]):(?P<size>\d+(\.\d+)?)")
VOLUME_KEY = re.compile(r"rootfs|mp\d+|unused\d+")
# Parameters of POST /lxc that steer the create and are not stored in the config.
CREATE_ONLY = {"vmid", "node", "ostemplate", "ssh-public-keys", "password", "storage", "pool",
               "start", "restore", "force", "unique", "ignore-unpack-errors", "bwlimit"}
SHUTDOWN_DEFAULT = 60
# Proxmox waits this long for a guest's config lock (lock_config) before giving up.
CONFIG_LOCK_TIMEOUT = 10
# Config keys a clone does not take over (pve-container clone_vm).
CLONE_DROPS = {"lock", "template", "snapshots", "parent", "snaptime", "snapstate", "pending"}


class Guests:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._create_lock = threading.Lock()
        self._vm_locks: dict[int, threading.RLock] = {}

    # -- config files ----------------------------------------------------------------

    def conf_path(self, vmid: int) -> Path:
        return self.node.state / "etc" / "pve" / "lxc" / f"{vmid}.conf"

    def vmids(self) -> list[int]:
        return sorted(int(p.stem) for p in (self.node.state / "etc/pve/lxc").glob("*.conf"))

    def load(self, vmid: int) -> dict[str, str]:
        path = self.conf_path(vmid)
        if not path.exists():
            raise ApiError(500, f"Configuration file 'nodes/{self.node.name}/lxc/{vmid}.conf' does not exist")
        return read_conf(path)

    def save(self, vmid: int, conf: dict[str, str]) -> None:
        write_conf(self.conf_path(vmid), conf)

    def vm_lock(self, vmid: int) -> threading.RLock:
        return self._vm_locks.setdefault(vmid, threading.RLock())

    @staticmethod
    def check_lock(conf: dict[str, str], task: bool = False) -> None:
        if "lock" in conf:
            message = f"CT is locked ({conf['lock']})"
            raise TaskFailed(message) if task else ApiError(500, message)

    def container(self, vmid: int, conf: dict[str, str]) -> lxc.Container:
        return lxc.Container(str(vmid), self.node.state / "lxc", rootfs_dir=self.rootfs_path(conf))

    def rootfs_path(self, conf: dict[str, str]) -> Path | None:
        """The rootfs volume's directory; None while a create has not allocated it yet."""
        volid = parse_props(conf["rootfs"], "volume")["volume"] if "rootfs" in conf else ""
        return None if not volid or NEW_VOLUME.fullmatch(volid) else self.node.storages.path(volid)

    def running(self, vmid: int, conf: dict[str, str] | None = None) -> bool:
        conf = conf if conf is not None else self.load(vmid)
        return self.container(vmid, conf).state() == "RUNNING"

    @staticmethod
    def volumes(conf: dict[str, str]) -> dict[str, str]:
        """{key: volid} of rootfs, mpN and unusedN that live on a storage (not bind mounts)."""
        found = {}
        for key, value in conf.items():
            if VOLUME_KEY.fullmatch(key):
                volid = parse_props(value, "volume")["volume"]
                if not volid.startswith("/"):
                    found[key] = volid
        return found

    # -- create ----------------------------------------------------------------------

    def create(self, params: dict[str, Any], user: str) -> str:
        vmid = int(params["vmid"])
        self._check_create_access(params, user)
        check_network(params)
        template = params["ostemplate"]
        try:
            template_path = self.node.storages.path(template)
        except TaskFailed as exc:
            raise ApiError(500, str(exc)) from None
        if not template_path.is_file():
            raise ApiError(500, f"volume '{template}' does not exist")
        if params.get("pool") and not self.node.access.pool_exists(params["pool"]):
            raise ApiError(500, f"pool '{params['pool']}' does not exist")
        conf = self._initial_conf(params)
        with self._create_lock:
            if self.conf_path(vmid).exists():
                raise ApiError(500, f"CT {vmid} already exists on node '{self.node.name}'")
            self.save(vmid, conf)

        def work(log: TaskLog) -> None:
            self._create_work(vmid, params, template_path, log)
        return self.node.tasks.start("vzcreate", str(vmid), user, work)

    def _check_create_access(self, params: dict[str, Any], user: str) -> None:
        access, vmid = self.node.access, params["vmid"]
        path = f"/pool/{params['pool']}" if params.get("pool") else f"/vms/{vmid}"
        if access.missing(user, path, ["VM.Allocate"]):
            raise forbidden(path, "VM.Allocate")
        if not params.get("unprivileged") and access.missing(user, "/", ["Sys.Modify"]):
            raise forbidden("/", "Sys.Modify")
        features = parse_props(params.get("features", ""))
        if set(features) - {"nesting"}:
            raise ApiError(403, "Permission check failed (changing feature flags (except nesting) "
                                "is only allowed for root@pam)")
        for key, value in params.items():
            if VOLUME_KEY.fullmatch(key):
                self._check_volume_access(user, parse_props(value, "volume")["volume"])
        self._check_volume_access(user, params["ostemplate"], privs=("Datastore.Audit", "Datastore.AllocateSpace"))

    def _check_volume_access(
        self, user: str, volid: str, privs: tuple[str, ...] = ("Datastore.AllocateSpace",)
    ) -> None:
        if volid.startswith("/"):
            raise ApiError(403, "Only root can pass arbitrary filesystem paths.")
        storage = volid.partition(":")[0]
        if self.node.access.missing(user, f"/storage/{storage}", privs, any_of=True):
            raise forbidden(f"/storage/{storage}", privs[-1])

    def _initial_conf(self, params: dict[str, Any]) -> dict[str, str]:
        conf = {k: str(v) for k, v in params.items() if k not in CREATE_ONLY}
        conf.setdefault("rootfs", f"{params.get('storage', 'local')}:4")
        conf.setdefault("arch", "amd64")
        conf.setdefault("hostname", f"CT{params['vmid']}")
        conf.setdefault("memory", "512")
        conf.setdefault("swap", "512")
        for key in [k for k in conf if re.fullmatch(r"net\d+", k)]:
            net = parse_props(conf[key])
            # Proxmox assigns a MAC at create (BC:24:11 is its OUI) and keeps it in the config.
            net.setdefault("hwaddr", new_mac())
            net.setdefault("type", "veth")
            conf[key] = format_props(net)
        conf["lock"] = "create"
        return conf

    def _create_work(self, vmid: int, params: dict[str, Any], template: Path, log: TaskLog) -> None:
        allocated: list[str] = []
        try:
            conf = self.load(vmid)
            for key in sorted(self.volume_specs(conf), key=lambda k: k != "rootfs"):
                conf[key] = self._attach_volume(vmid, conf[key], allocated, log)
            rootfs_volid = parse_props(conf["rootfs"], "volume")["volume"]
            rootfs = self.node.storages.path(rootfs_volid)
            log.line(f"extracting archive '{template}'")
            log.line(lxc.extract_template(template, rootfs).strip())
            log.line("Detected container architecture: amd64")
            conf["ostype"] = ctsetup.detect_os(rootfs).split()[0]
            ctsetup.at_create(rootfs, conf, params.get("ssh-public-keys"), log)
            self.node.storages.flush(rootfs_volid)
        except Exception:
            for volid in allocated:
                self.node.storages.free(volid)
            self.conf_path(vmid).unlink(missing_ok=True)
            raise
        log.settle()
        del conf["lock"]
        self.save(vmid, conf)
        if params.get("pool"):
            self.node.access.set_pool(vmid, params["pool"])
        if params.get("start"):
            self._start_work(vmid, log)

    @staticmethod
    def volume_specs(conf: dict[str, str]) -> list[str]:
        return [k for k in conf if VOLUME_KEY.fullmatch(k) and not k.startswith("unused")]

    def _attach_volume(self, vmid: int, value: str, allocated: list[str], log: TaskLog) -> str:
        """A new volume for ``STORAGE:SIZE``; an existing volid is used as is (it must exist)."""
        props = parse_props(value, "volume")
        new = NEW_VOLUME.fullmatch(props["volume"])
        if new:
            volid = self.node.storages.alloc(new["storage"], vmid, float(new["size"]))
            allocated.append(volid)
            log.line(f"allocated volume {volid} ({new['size']} GiB, size not enforced in the lab)")
            props["volume"] = volid
            props["size"] = f"{new['size']}G"
        elif not props["volume"].startswith("/") and not self.node.storages.volume_exists(props["volume"]):
            raise TaskFailed(f"volume '{props['volume']}' does not exist")
        return format_props(props, "volume")

    # -- power -----------------------------------------------------------------------

    def start(self, vmid: int, user: str) -> str:
        conf = self.load(vmid)
        # Proxmox checks the lock in the worker (as the template check below); the lab has always
        # answered it at once (tests/test_lab_api.py), and the worker checks again.
        self.check_lock(conf)
        if self.running(vmid, conf):
            raise ApiError(500, f"CT {vmid} already running")
        return self.node.tasks.start("vzstart", str(vmid), user, lambda log: self._start_work(vmid, log))

    def _start_work(self, vmid: int, log: TaskLog) -> None:
        with self.vm_lock(vmid):
            conf = self.load(vmid)
            if is_template(conf):  # checked in the worker, as pve-container does
                raise TaskFailed("you can't start a CT if it's a template")
            self.check_lock(conf, task=True)
            self._activate(conf)
            ct = self.container(vmid, conf)
            if not ct.rootfs.is_dir():
                raise TaskFailed(f"rootfs volume of CT {vmid} is missing ({ct.rootfs})")
            net = ctsetup.NetConfig.parse(conf["net0"]) if "net0" in conf else None
            address = net.ip if net and net.ip and "/" in net.ip else None
            if address and not lxc.claim_address(address):
                raise TaskFailed(f"address {address} is in use by another lab container")
            ctsetup.at_start(ct.rootfs, conf)
            self._start_warnings(ct.rootfs, conf, log)
            ct.write_config(
                address=address, gateway=net.gw if net else None, hostname=conf.get("hostname"),
                mounts=self._mounts(conf), nesting=has_nesting(conf),
                memory_mib=int(conf.get("memory", 512)), hwaddr=net.hwaddr if net else None,
                lxc_sets_address=False,  # as on Proxmox: the CT's ifupdown, from net0
            )
            log.settle()  # a real node's prestart hook has run by now (lab/data/costs.yml)
            self.node.ensure_bridge()
            ct.start()

    def _mounted_volumes(self, conf: dict[str, str]) -> list[str]:
        """Volids of rootfs and volume mpN (what mount_all mounts; not bind mounts, not unusedN)."""
        return [parse_props(conf[k], "volume")["volume"] for k in self.volume_specs(conf)
                if not parse_props(conf[k], "volume")["volume"].startswith("/")
                and not NEW_VOLUME.fullmatch(parse_props(conf[k], "volume")["volume"])]

    def _activate(self, conf: dict[str, str]) -> None:
        """Activate the CT's volumes before use (a linked clone's overlay gets mounted)."""
        for volid in self._mounted_volumes(conf):
            if self.node.storages.volume_dir(volid).is_dir():
                self.node.storages.activate(volid)

    def _deactivate(self, conf: dict[str, str]) -> None:
        """After the CT stopped: a linked clone's overlay is unmounted (as Proxmox unmounts the rootfs)."""
        for volid in self._mounted_volumes(conf):
            try:
                self.node.storages.deactivate(volid)
            except (TaskFailed, OSError, subprocess.SubprocessError) as exc:
                print(f"deactivating {volid} failed: {exc}", flush=True)

    def _mounts(self, conf: dict[str, str]) -> list[lxc.Mount]:
        mounts = []
        for key in sorted((k for k in conf if re.fullmatch(r"mp\d+", k)), key=lambda k: int(k[2:])):
            props = parse_props(conf[key], "volume")
            volid = props["volume"]
            source = Path(volid) if volid.startswith("/") else self.node.storages.path(volid)
            mounts.append(lxc.Mount(source, props["mp"]))
        return mounts

    @staticmethod
    def _systemd_warning(rootfs: Path, conf: dict[str, str], log: TaskLog) -> None:
        """LXC::Setup's check_systemd_nesting (at start and in a clone's post_clone_hook)."""
        if has_nesting(conf):
            return
        systemd = sorted(rootfs.glob("usr/lib/systemd/libsystemd-shared-*.so")) or sorted(
            rootfs.glob("usr/lib/*/systemd/libsystemd-shared-*.so"))
        if systemd:
            version = re.sub(r"\D.*", "", systemd[-1].name.removeprefix("libsystemd-shared-"))
            log.warn(f"Systemd {version} detected. You may need to enable nesting.")

    @classmethod
    def _start_warnings(cls, rootfs: Path, conf: dict[str, str], log: TaskLog) -> None:
        cls._systemd_warning(rootfs, conf, log)
        if has_nesting(conf):
            return
        extensions = rootfs / "var/lib/extensions"
        if extensions.is_dir() and any(extensions.iterdir()):
            # Real Proxmox's AppArmor profile denies the overlay mount without nesting (DESIGN §5).
            log.warn("/var/lib/extensions has content but features nesting=1 is not set: "
                     "on Proxmox VE, AppArmor denies the overlay mount systemd-sysext needs")

    def stop(self, vmid: int, user: str) -> str:
        conf = self.load(vmid)
        if not self.running(vmid, conf):
            raise ApiError(500, f"CT {vmid} not running")

        def work(log: TaskLog) -> None:
            self.container(vmid, conf).stop(force=True)
            self._release(conf)
            log.settle()
        return self.node.tasks.start("vzstop", str(vmid), user, work)

    def shutdown(self, vmid: int, params: dict[str, Any], user: str) -> str:
        conf = self.load(vmid)
        self.check_lock(conf)
        if not self.running(vmid, conf):
            raise ApiError(500, f"CT {vmid} not running")
        timeout = int(params.get("timeout", SHUTDOWN_DEFAULT))

        def work(log: TaskLog) -> None:
            self._shutdown(vmid, conf, timeout, bool(params.get("forceStop")))
        return self.node.tasks.start("vzshutdown", str(vmid), user, work)

    def _shutdown(self, vmid: int, conf: dict[str, str], timeout: int, force: bool) -> None:
        ct = self.container(vmid, conf)
        ct.stop(timeout=timeout, kill_after=force)
        if ct.state() != "STOPPED":
            raise TaskFailed("shutdown timeout")  # only without forceStop: the CT keeps running
        self._release(conf)

    def reboot(self, vmid: int, params: dict[str, Any], user: str) -> str:
        conf = self.load(vmid)
        self.check_lock(conf)
        if not self.running(vmid, conf):
            raise ApiError(500, f"CT {vmid} not running")

        def work(log: TaskLog) -> None:
            self._shutdown(vmid, conf, int(params.get("timeout", SHUTDOWN_DEFAULT)), True)
            self._start_work(vmid, log)
        return self.node.tasks.start("vzreboot", str(vmid), user, work)

    def _release(self, conf: dict[str, str]) -> None:
        self._deactivate(conf)
        net = ctsetup.NetConfig.parse(conf["net0"]) if "net0" in conf else None
        if net and net.ip and "/" in net.ip:
            lxc.release_address(net.ip)

    # -- delete ----------------------------------------------------------------------

    def delete(self, vmid: int, params: dict[str, Any], user: str) -> str:
        conf = self.load(vmid)
        self.check_lock(conf)
        if self.running(vmid, conf):
            raise ApiError(500, f"unable to destroy CT {vmid} - container is running")

        def work(log: TaskLog) -> None:
            self._delete_work(vmid, params, log)
        return self.node.tasks.start("vzdestroy", str(vmid), user, work)

    def _delete_work(self, vmid: int, params: dict[str, Any], log: TaskLog) -> None:
        with self.vm_lock(vmid):
            conf = self.load(vmid)
            self.check_lock(conf, task=True)
            storages = self.node.storages
            for key, volid in self.volumes(conf).items():
                if storages.owner(volid) == vmid:
                    storages.free(volid)
                    log.line(f"freed {key} volume {volid}")
                else:
                    log.line(f"kept {key} volume {volid}: not owned by CT {vmid}")
            if params.get("destroy-unreferenced-disks"):
                for storage in storages.ids():
                    for item in storages.content(storage):
                        if item.get("vmid") == vmid:
                            storages.free(item["volid"])
                            log.line(f"freed unreferenced volume {item['volid']}")
            self.container(vmid, conf).destroy(keep_rootfs=True)
            log.settle()
            self.conf_path(vmid).unlink()
            if params.get("purge"):
                self.node.access.set_pool(vmid, None)

    # -- template and clone (pve-container API2/LXC.pm template, clone_vm) --------------

    def make_template(self, vmid: int, user: str) -> None:
        """Checks in Proxmox's order under the config lock, then a vztemplate task; the call
        itself answers null. The worker keeps the config lock (Proxmox's forked worker inherits
        the flock), so a clone right after waits for the conversion to finish."""
        lock = self.vm_lock(vmid)
        if not lock.acquire(timeout=CONFIG_LOCK_TIMEOUT):
            raise ApiError(500, f"can't lock file '/run/lock/lxc/pve-config-{vmid}.lock' - got timeout")
        holding = threading.Event()
        try:
            conf = self.load(vmid)
            self.check_lock(conf)
            if is_template(conf):
                raise ApiError(500, "you can't convert a template to a template")
            if self.running(vmid, conf):
                raise ApiError(500, "you can't convert a CT to template if the CT is running")

            def work(log: TaskLog) -> None:
                with self.vm_lock(vmid):
                    holding.set()
                    self._template_work(vmid, log)
            self.node.tasks.start("vztemplate", str(vmid), user, work)
        finally:
            lock.release()
        holding.wait(timeout=CONFIG_LOCK_TIMEOUT)

    def _template_work(self, vmid: int, log: TaskLog) -> None:
        conf = self.load(vmid)
        storages = self.node.storages
        keys = [k for k in self.volume_specs(conf)]
        for key in keys:  # PVE::LXC::template_create: every volume first, then the renames
            volid = parse_props(conf[key], "volume")["volume"]
            if volid.startswith("/") or ":" not in volid:
                raise TaskFailed(f"unable to parse volume ID '{volid}'")
            if not storages.has_feature("template", volid):
                raise TaskFailed(f"Template feature is not available for '{volid}'")
        for key in keys:
            props = parse_props(conf[key], "volume")
            storages.deactivate(props["volume"])
            new = storages.make_base(props["volume"])
            if new != props["volume"]:
                old_name, new_name = props["volume"].partition(":")[2], new.partition(":")[2]
                log.line(f'  Renamed "{old_name}" to "{new_name}" (lab: the volume directory)')
            props["volume"] = new
            conf[key] = format_props(props, "volume")
            self.save(vmid, conf)
        log.settle()
        conf["template"] = "1"
        self.save(vmid, conf)
        self.container(vmid, conf).destroy(keep_rootfs=True)  # update_lxc_config: no LXC config

    def clone(self, vmid: int, params: dict[str, Any], user: str) -> str:
        """Synchronous checks in pve-container's order (clone_vm), then the vzclone task (its id:
        the source). The source gets ``lock: disk`` and the new CT a config with ``lock: create``
        until the task ends."""
        newid, storage, pool = int(params["newid"]), params.get("storage"), params.get("pool")
        storages = self.node.storages
        if pool is not None and not self.node.access.pool_exists(pool):
            raise ApiError(403, f"Permission check failed (pool '{pool}' does not exist)")
        target = params.get("target")
        if target and target not in (self.node.name, "localhost"):
            raise ApiError(500, f"no such cluster node '{target}'")
        if storage and not storages.exists(storage):
            raise ApiError(500, f"storage '{storage}' does not exist")
        with self._create_lock:
            source = self._set_lock(vmid, "disk")
            if self.conf_path(newid).exists():
                self._remove_lock(vmid, "disk")
                raise ApiError(500, f"CT {newid} already exists on node '{self.node.name}'")
            self.save(newid, {"lock": "create"})
        try:
            running = self.running(vmid, source)
            full = bool(params["full"]) if "full" in params else not is_template(source)
            newconf, volumes = self._clone_conf(source, params, full, running, user)
            self.save(newid, newconf)
        except BaseException:
            self._remove_lock(vmid, "disk")
            self.conf_path(newid).unlink(missing_ok=True)
            raise

        def work(log: TaskLog) -> None:
            self._clone_work(vmid, newid, params, volumes, full, running, log)
        return self.node.tasks.start("vzclone", str(vmid), user, work)

    def _set_lock(self, vmid: int, lock: str) -> dict[str, str]:
        held = self.vm_lock(vmid)
        if not held.acquire(timeout=CONFIG_LOCK_TIMEOUT):
            raise ApiError(500, f"can't lock file '/run/lock/lxc/pve-config-{vmid}.lock' - got timeout")
        try:
            conf = self.load(vmid)
            self.check_lock(conf)
            conf["lock"] = lock
            self.save(vmid, conf)
            return conf
        finally:
            held.release()

    def _remove_lock(self, vmid: int, lock: str) -> None:
        with self.vm_lock(vmid):
            if self.conf_path(vmid).exists():
                conf = self.load(vmid)
                if conf.get("lock") == lock:
                    del conf["lock"]
                    self.save(vmid, conf)

    def _clone_conf(self, source: dict[str, str], params: dict[str, Any], full: bool, running: bool,
                    user: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        """The new CT's config and the volumes to clone, with clone_vm's checks in its order."""
        storage = params.get("storage")
        if storage is not None and not full:
            raise ApiError(500, "parameter 'storage' not allowed for linked clones")
        if params.get("snapname"):
            raise ApiError(500, f"snapshot '{params['snapname']}' does not exist")  # the lab has none
        newconf: dict[str, str] = {}
        volumes: dict[str, dict[str, str]] = {}
        for key in sorted(source):  # Perl's sort keys: mp0 before net0 before rootfs
            value = source[key]
            if re.fullmatch(r"unused\d+", key):
                continue
            if key == "rootfs" or re.fullmatch(r"mp\d+", key):
                props = parse_props(value, "volume")
                volid = props["volume"]
                if volid.startswith("/"):
                    kind = "device" if volid.startswith("/dev/") else "bind"
                    raise ApiError(500, f"unable to clone mountpoint '{key}' ({'type ' + kind})")
                sid = storage if storage is not None else volid.partition(":")[0]
                if self.node.access.missing(user, f"/storage/{sid}", ["Datastore.AllocateSpace"]):
                    raise forbidden(f"/storage/{sid}", "Datastore.AllocateSpace")
                if full:
                    if running:
                        raise ApiError(500, "Full clone of a running container is only possible from a snapshot")
                elif not self.node.storages.has_feature("clone", volid):
                    raise ApiError(500, f"Linked clone feature for '{volid}' is not available")
                volumes[key] = props
            elif re.fullmatch(r"net\d+", key):
                net = parse_props(value)
                net["hwaddr"] = new_mac()  # pve-container: "always change MAC! address"
                newconf[key] = format_props(net)
            else:
                newconf[key] = value
        for key in CLONE_DROPS:
            newconf.pop(key, None)
        newconf["lock"] = "create"
        for key in ("hostname", "description"):
            if params.get(key):
                newconf[key] = str(params[key])
        return newconf, volumes

    def _update_new(self, newid: int, changes: dict[str, str | None]) -> dict[str, str]:
        """Change the new CT's config while it still has the create lock (lock_and_reload)."""
        with self.vm_lock(newid):
            conf = self.load(newid)
            if conf.get("lock") != "create":
                raise TaskFailed("Lost 'create' config lock, aborting.")
            for key, value in changes.items():
                if value is None:
                    conf.pop(key, None)
                else:
                    conf[key] = value
            self.save(newid, conf)
            return conf

    def _clone_work(self, vmid: int, newid: int, params: dict[str, Any], volumes: dict[str, dict[str, str]],
                    full: bool, running: bool, log: TaskLog) -> None:
        storages = self.node.storages
        made: list[str] = []
        log.line(f"creating a clone of container {vmid} with ID {newid}")
        try:
            if self.running(vmid) != running:
                raise TaskFailed("unexpected state change")
            for key in sorted(volumes, key=lambda k: (k != "rootfs", k)):
                props = dict(volumes[key])
                volid = props["volume"]
                if full:
                    log.line(f"create full clone of mountpoint {key} ({volid})")
                    target = params.get("storage") or volid.partition(":")[0]
                    props["volume"] = storages.copy(volid, target, newid, params.get("bwlimit"))
                else:
                    log.line(f"create linked clone of mount point {key} ({volid})")
                    props["volume"] = storages.link(volid, newid)
                made.append(props["volume"])
                self._update_new(newid, {key: format_props(props, "volume")})
            if params.get("pool"):
                self.node.access.set_pool(newid, params["pool"])
            conf = self._update_new(newid, {})
            self._activate(conf)  # mount_all
            try:
                rootfs = self.rootfs_path(conf)
                if rootfs is not None:
                    _post_clone_hook(rootfs)
                    self._systemd_warning(rootfs, conf, log)
            finally:
                self._deactivate(conf)  # umount_all
        except BaseException as exc:
            self._remove_lock(vmid, "disk")
            for volid in made:
                try:
                    storages.free(volid)
                except Exception as free_exc:  # as Proxmox: warn and go on
                    log.warn(str(free_exc))
            if params.get("pool"):
                self.node.access.set_pool(newid, None)
            self.conf_path(newid).unlink(missing_ok=True)
            message = exc.args[0] if isinstance(exc, TaskFailed) and exc.args else str(exc)
            raise TaskFailed(f"clone failed: {message}") from exc
        log.settle()
        self._update_new(newid, {"lock": None})
        self._remove_lock(vmid, "disk")  # clone_vm unlocks the source last

    # -- move_volume -----------------------------------------------------------------

    def move_volume(self, vmid: int, params: dict[str, Any], user: str) -> str:
        key, target = params["volume"], params.get("target-vmid")
        if target is None:
            raise ApiError(500, "the lab moves volumes between containers only (target-vmid); "
                                "there is one storage for container volumes")
        if "storage" in params:
            raise param_error({"storage": "cannot be combined with target-vmid"})
        target = int(target)
        if target == vmid:
            raise ApiError(500, "Moving a volume to the same container is not possible. "
                                "Did you mean to move the volume to a different storage?")
        if self.node.access.missing(user, f"/vms/{target}", ["VM.Config.Disk"]):
            raise forbidden(f"/vms/{target}", "VM.Config.Disk")
        target_key = params.get("target-volume", key)
        self._check_move(vmid, key, target, target_key)

        def work(log: TaskLog) -> None:
            self._move_work(vmid, key, target, target_key, log)
        return self.node.tasks.start("move_volume", str(vmid), user, work)

    def _check_move(self, vmid: int, key: str, target: int, target_key: str) -> None:
        source_conf, target_conf = self.load(vmid), self.load(target)
        for conf in (source_conf, target_conf):
            self.check_lock(conf)
        if key == "rootfs" or target_key == "rootfs":
            raise ApiError(500, "Cannot move the root file system (rootfs) to another container")
        if key not in self.volumes(source_conf):
            raise ApiError(500, f"Volume '{key}' not found in the config of CT {vmid}")
        if self.running(vmid, source_conf) or self.running(target, target_conf):
            raise ApiError(500, "Cannot move volumes of a running container")
        if target_key in target_conf:
            raise ApiError(500, f"Target volume key '{target_key}' is already in use for CT {target}")

    def _move_work(self, vmid: int, key: str, target: int, target_key: str, log: TaskLog) -> None:
        first, second = sorted((vmid, target))
        with self.vm_lock(first), self.vm_lock(second):
            source_conf, target_conf = self.load(vmid), self.load(target)
            props = parse_props(source_conf[key], "volume")
            new_volid = self.node.storages.rename(props["volume"], target)
            log.line(f"moving volume '{props['volume']}' of CT {vmid} ({key}) to CT {target} "
                     f"({target_key}) as '{new_volid}'")
            props["volume"] = new_volid
            target_conf[target_key] = format_props(props, "volume")
            del source_conf[key]
            self.save(target, target_conf)
            self.save(vmid, source_conf)

    # -- config ----------------------------------------------------------------------

    def update_config(self, vmid: int, params: dict[str, Any], user: str) -> None:
        with self.vm_lock(vmid):
            conf = self.load(vmid)
            self.check_lock(conf)
            if params.get("digest") and params["digest"] != digest(conf):
                raise ApiError(500, "detected modified configuration - file changed by other user? Try again.")
            check_network(params)
            for key in re.split(r"[,;\s]+", params.get("delete", "")):
                if key:
                    self._delete_key(conf, key)
            changes = {k: v for k, v in params.items() if k not in {"node", "vmid", "delete", "digest", "revert"}}
            for key, value in changes.items():
                if VOLUME_KEY.fullmatch(key):
                    self._check_volume_access(user, parse_props(str(value), "volume")["volume"])
                    if key == "rootfs":
                        raise param_error({"rootfs": "changing the rootfs volume is not supported (use move_volume)"})
                    allocated: list[str] = []
                    value = self._attach_volume(vmid, str(value), allocated, TaskLog(Path("/dev/null")))
                    self._unuse_replaced(conf, key, value)
                elif re.fullmatch(r"net\d+", key):
                    net = parse_props(str(value))
                    net.setdefault("hwaddr", new_mac())  # parse_lxc_network: no hwaddr, a new random MAC
                    net.setdefault("type", "veth")
                    value = format_props(net)
                conf[key] = str(value)
            self.save(vmid, conf)

    def _delete_key(self, conf: dict[str, str], key: str) -> None:
        """Deleting an mpN keeps its volume as unusedN, as Proxmox does (DELETE of the CT frees it)."""
        if re.fullmatch(r"mp\d+", key) and key in conf:
            self._unuse(conf, parse_props(conf[key], "volume")["volume"])
        conf.pop(key, None)

    def _unuse_replaced(self, conf: dict[str, str], key: str, value: str) -> None:
        if key in conf and not key.startswith("unused"):
            old = parse_props(conf[key], "volume")["volume"]
            if old != parse_props(value, "volume")["volume"]:
                self._unuse(conf, old)

    @staticmethod
    def _unuse(conf: dict[str, str], volid: str) -> None:
        if volid.startswith("/"):
            return
        free = next(n for n in range(256) if f"unused{n}" not in conf)
        conf[f"unused{free}"] = volid

    # -- reads -----------------------------------------------------------------------

    def status(self, vmid: int) -> dict[str, Any]:
        conf = self.load(vmid)
        ct = self.container(vmid, conf)
        info: dict[str, Any] = {
            "vmid": vmid, "name": conf.get("hostname", ""), "type": "lxc", "status": "stopped",
            "uptime": 0, "mem": 0, "maxmem": int(conf.get("memory", 512)) * 1024**2,
            "swap": 0, "maxswap": int(conf.get("swap", 512)) * 1024**2,
            "cpus": int(conf.get("cores", 1)), "cpu": 0, "disk": 0, "netin": 0, "netout": 0,
            "diskread": 0, "diskwrite": 0, "ha": {"managed": 0},
        }
        rootfs = self.rootfs_path(conf)
        if rootfs and rootfs.exists():
            info["maxdisk"] = self.node.storages.size(parse_props(conf["rootfs"], "volume")["volume"])
        for key in ("lock", "tags"):
            if key in conf:
                info[key] = conf[key]
        if is_template(conf):
            info["template"] = 1
        pid = ct.pid()
        if pid:
            info.update(status="running", pid=pid, uptime=self.node.uptime_of(pid),
                        mem=self.node.memory_of(str(vmid)))
        return info

    def problem(self, vmid: int) -> str | None:
        """Why this CT cannot run as configured, for `lab status`; None when nothing is wrong.

        Proxmox lists such a guest as stopped and lets DELETE remove it; so does the lab."""
        conf = self.load(vmid)
        rootfs = self.rootfs_path(conf)
        if rootfs is not None and not rootfs.is_dir():
            return f"rootfs volume missing ({rootfs})"
        broken = self.container(vmid, conf).config_problem()
        if broken:
            return f"LXC cannot load its config: {broken}"
        starts = [t for t in self.node.tasks.all() if t["type"] == "vzstart" and t["id"] == str(vmid)]
        if starts and starts[0]["status"] == "stopped" and starts[0]["exitstatus"] != "OK" \
                and not self.running(vmid, conf):
            return f"last start failed: {starts[0]['exitstatus']}"
        return None

    def interfaces(self, vmid: int) -> list[dict[str, str]]:
        conf = self.load(vmid)
        ct = self.container(vmid, conf)
        if ct.state() != "RUNNING":
            raise ApiError(500, f"CT {vmid} not running")
        links = json.loads(ct.attach(["ip", "-j", "addr", "show"]).stdout)
        result = []
        for link in links:
            entry = {"name": link["ifname"], "hwaddr": link.get("address", "")}
            for addr in link.get("addr_info", []):
                family = "inet" if addr["family"] == "inet" else "inet6"
                entry.setdefault(family, f"{addr['local']}/{addr['prefixlen']}")
            result.append(entry)
        return result


def is_template(conf: dict[str, str]) -> bool:
    return conf.get("template") == "1"


def new_mac() -> str:
    """A random MAC with Proxmox's prefix (BC:24:11)."""
    return "BC:24:11:" + ":".join(f"{b:02X}" for b in secrets.token_bytes(3))


def _post_clone_hook(rootfs: Path) -> None:
    """LXC::Setup::Base::post_clone_hook = clear_machine_id($conf, 1), nothing else: with systemd,
    /var/lib/dbus/machine-id (unless a symlink) goes and an existing /etc/machine-id is truncated
    to a newline unless it says "uninitialized". No new SSH host keys (only post_create_hook)."""
    uses_systemd = any(os.access(rootfs / p, os.X_OK) and (rootfs / p).is_file()
                       for p in ("lib/systemd/systemd", "usr/lib/systemd/systemd"))
    if not uses_systemd:
        machine_id = rootfs / "etc" / "machine-id"
        if machine_id.is_file() and not machine_id.is_symlink():
            machine_id.write_text("")
        return
    dbus_id = rootfs / "var" / "lib" / "dbus" / "machine-id"
    if (dbus_id.exists() or dbus_id.is_symlink()) and not dbus_id.is_symlink():
        dbus_id.unlink()
    machine_id = rootfs / "etc" / "machine-id"
    if machine_id.is_file() and not machine_id.is_symlink():
        first = (machine_id.read_text(errors="replace").splitlines() or [""])[0]
        if first != "uninitialized":
            machine_id.write_text("\n")


def has_nesting(conf: dict[str, str]) -> bool:
    return parse_props(conf.get("features", "")).get("nesting") in ("1", "true", "yes", "on")


def check_network(params: dict[str, Any]) -> None:
    """Network safety: only the lab bridge, only static addresses in the lab subnet."""
    errors = {}
    for key, value in params.items():
        if not re.fullmatch(r"net\d+", key):
            continue
        net = ctsetup.NetConfig.parse(str(value))
        if key != "net0":
            errors[key] = "the lab supports net0 only"
        elif net.bridge != lxc.BRIDGE:
            errors[key] = f"bridge '{net.bridge}' is not the lab bridge {lxc.BRIDGE} (network safety)"
        elif net.ip is None or "/" not in net.ip:
            errors[key] = f"the lab needs a static ip=ADDRESS/PREFIX in {lxc.NETWORK}"
        else:
            try:
                lxc.check_lab_address(net.ip)
            except lxc.LxcError as exc:
                errors[key] = exc.message
        if key == "net0" and net.gw and net.gw != lxc.GATEWAY:
            errors.setdefault(key, f"gateway {net.gw} is not the lab gateway {lxc.GATEWAY}")
    if errors:
        raise param_error(errors)

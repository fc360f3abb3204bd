"""One function per API endpoint: (RequestContext, validated params) -> the ``data`` to answer.

Permission checks written in the schema (``check``) ran before; the checks Proxmox does
inside a handler (lists filtered by privilege, create, task ownership) are done here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lab.errors import ApiError, forbidden, param_error
from lab.guests import Guests
from lab.node import PVE_VERSION, Node
from lab.pveconf import digest, parse_props
from lab.tasks import Upid

Handler = Callable[["RequestContext", dict[str, Any]], Any]
HANDLERS: dict[tuple[str, str], Handler] = {}
CT = "/nodes/{node}/lxc/{vmid}"
TASK = "/nodes/{node}/tasks/{upid}"
INT_KEYS = re.compile(r"cores|memory|swap|onboot|unprivileged|protection|tty|console|template|cpuunits")


@dataclass
class RequestContext:
    node: Node
    guests: Guests
    user: str

    def can(self, path: str, privs: list[str]) -> bool:
        return self.node.access.missing(self.user, path, privs, any_of=True) is None


def api(method: str, path: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[(method, path)] = fn
        return fn
    return register


def _node(ctx: RequestContext, params: dict[str, Any]) -> None:
    name = params.get("node")
    if name is not None and name != ctx.node.name:
        raise ApiError(595, f"no such node '{name}' (the lab has one node, {ctx.node.name})")


# -- version, nodes, cluster ---------------------------------------------------------

@api("GET", "/version")
def version(ctx: RequestContext, params: dict[str, Any]) -> Any:
    return PVE_VERSION


@api("GET", "/nodes")
def nodes(ctx: RequestContext, params: dict[str, Any]) -> Any:
    return [ctx.node.summary()]


@api("GET", "/nodes/{node}/status")
def node_status(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    return ctx.node.status()


@api("GET", "/cluster/nextid")
def nextid(ctx: RequestContext, params: dict[str, Any]) -> Any:
    taken = set(ctx.guests.vmids())
    if "vmid" in params:
        if params["vmid"] in taken:
            raise param_error({"vmid": f"VM {params['vmid']} already exists"})
        return params["vmid"]
    return next(v for v in range(100, 1_000_000_000) if v not in taken)


@api("GET", "/cluster/resources")
def resources(ctx: RequestContext, params: dict[str, Any]) -> Any:
    kind = params.get("type")
    items = []
    if kind in (None, "vm"):
        for entry in lxc_list(ctx, {}):
            pool = ctx.node.access.pool_of(entry["vmid"])
            items.append({"template": 0, **entry, "id": f"lxc/{entry['vmid']}", "node": ctx.node.name,
                          **({"pool": pool} if pool else {})})
    if kind in (None, "storage"):
        for item in storage_list(ctx, {}):
            items.append({"id": f"storage/{ctx.node.name}/{item['storage']}", "type": "storage",
                          "storage": item["storage"], "node": ctx.node.name, "status": "available",
                          "content": item["content"], "plugintype": item["type"],
                          "disk": item["used"], "maxdisk": item["total"], "shared": 0})
    if kind in (None, "node"):
        items.append(ctx.node.summary())
    return items


# -- containers ------------------------------------------------------------------------

@api("GET", "/nodes/{node}/lxc")
def lxc_list(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    listed = []
    for vmid in ctx.guests.vmids():
        if ctx.can(f"/vms/{vmid}", ["VM.Audit"]):
            status = ctx.guests.status(vmid)
            listed.append({k: v for k, v in status.items() if k != "ha"})
    return listed


@api("POST", "/nodes/{node}/lxc")
def lxc_create(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    return ctx.guests.create(params, ctx.user)


@api("GET", CT)
def lxc_read(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    ctx.guests.load(params["vmid"])
    return [{"subdir": s} for s in ("config", "status", "vncproxy", "termproxy", "vncwebsocket",
                                     "spiceproxy", "remote_migrate", "migrate", "clone", "snapshot",
                                     "resize", "rrd", "rrddata", "firewall", "pending", "feature",
                                     "move_volume", "interfaces", "mtunnel", "mtunnelwebsocket")]


@api("DELETE", CT)
def lxc_delete(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    return ctx.guests.delete(params["vmid"], params, ctx.user)


@api("GET", CT + "/config")
def config_get(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    conf = ctx.guests.load(params["vmid"])
    typed: dict[str, Any] = {k: int(v) if INT_KEYS.fullmatch(k) and v.isdigit() else v for k, v in conf.items()}
    return {**typed, "digest": digest(conf)}


@api("PUT", CT + "/config")
def config_put(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    if params.get("features") and set(parse_props(params["features"])) - {"nesting"}:
        raise ApiError(403, "Permission check failed (changing feature flags (except nesting) "
                            "is only allowed for root@pam)")
    ctx.guests.update_config(params["vmid"], params, ctx.user)
    return None


@api("GET", CT + "/pending")
def pending(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    # The lab applies every change at once, so nothing is ever pending: current values only.
    return [{"key": k, "value": v} for k, v in sorted(ctx.guests.load(params["vmid"]).items())]


@api("GET", CT + "/status/current")
def status_current(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    return ctx.guests.status(params["vmid"])


@api("POST", CT + "/status/start")
def start(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    return ctx.guests.start(params["vmid"], ctx.user)


@api("POST", CT + "/status/stop")
def stop(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    return ctx.guests.stop(params["vmid"], ctx.user)


@api("POST", CT + "/status/shutdown")
def shutdown(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    return ctx.guests.shutdown(params["vmid"], params, ctx.user)


@api("POST", CT + "/status/reboot")
def reboot(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    return ctx.guests.reboot(params["vmid"], params, ctx.user)


@api("POST", CT + "/template")
def template(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    ctx.guests.make_template(params["vmid"], ctx.user)
    return None  # Proxmox answers null; the conversion runs as a vztemplate task


@api("POST", CT + "/clone")
def clone(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    return ctx.guests.clone(params["vmid"], params, ctx.user)


@api("POST", CT + "/move_volume")
def move_volume(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    return ctx.guests.move_volume(params["vmid"], params, ctx.user)


@api("GET", CT + "/interfaces")
def interfaces(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    return ctx.guests.interfaces(params["vmid"])


# -- storage ---------------------------------------------------------------------------

def _storage(ctx: RequestContext, params: dict[str, Any]) -> str:
    _node(ctx, params)
    storage = params["storage"]
    if not ctx.node.storages.exists(storage):
        raise ApiError(500, f"storage '{storage}' does not exist")
    return storage


@api("GET", "/nodes/{node}/storage")
def storage_list(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    wanted = set(filter(None, params.get("content", "").split(",")))
    listed = []
    for storage in ctx.node.storages.ids():
        if not ctx.can(f"/storage/{storage}", ["Datastore.Audit", "Datastore.AllocateSpace"]):
            continue
        if params.get("storage") not in (None, storage):
            continue
        if wanted and not wanted & set(ctx.node.storages.content_types(storage)):
            continue
        listed.append(ctx.node.storages.status(storage))
    return listed


@api("GET", "/nodes/{node}/storage/{storage}/status")
def storage_status(ctx: RequestContext, params: dict[str, Any]) -> Any:
    return ctx.node.storages.status(_storage(ctx, params))


@api("GET", "/nodes/{node}/storage/{storage}/content")
def storage_content(ctx: RequestContext, params: dict[str, Any]) -> Any:
    items = ctx.node.storages.content(_storage(ctx, params))
    if "content" in params:
        items = [i for i in items if i["content"] in params["content"].split(",")]
    if "vmid" in params:
        items = [i for i in items if i.get("vmid") == params["vmid"]]
    return items


@api("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}")
def storage_delete(ctx: RequestContext, params: dict[str, Any]) -> Any:
    storage = _storage(ctx, params)
    volume = params["volume"]
    volid = volume if volume.startswith(f"{storage}:") else f"{storage}:{volume}"
    if not ctx.can(f"/storage/{storage}", ["Datastore.Allocate"]):
        raise forbidden(f"/storage/{storage}", "Datastore.Allocate")
    owner = ctx.node.storages.owner(volid)
    if owner is not None and owner in ctx.guests.vmids():
        conf = ctx.guests.load(owner)
        if volid in ctx.guests.volumes(conf).values():
            raise ApiError(500, f"unable to delete '{volid}' - volume is still in use (CT {owner})")
    if not ctx.node.storages.volume_exists(volid):
        raise ApiError(500, f"volume '{volid}' does not exist")
    return ctx.node.tasks.start("imgdel", "", ctx.user, lambda log: ctx.node.storages.free(volid))


# -- tasks -----------------------------------------------------------------------------

def _task(ctx: RequestContext, params: dict[str, Any]) -> dict:
    _node(ctx, params)
    record = ctx.node.tasks.status(params["upid"])
    if not Upid.parse(params["upid"]):
        raise param_error({"upid": f"unable to parse worker upid '{params['upid']}'"})
    if record is None:
        raise ApiError(400, "no such task")
    if record["user"] != ctx.user and not ctx.can(f"/nodes/{ctx.node.name}", ["Sys.Audit"]):
        raise forbidden(f"/nodes/{ctx.node.name}", "Sys.Audit")
    return record


@api("GET", "/nodes/{node}/tasks")
def task_list(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _node(ctx, params)
    audit = ctx.can(f"/nodes/{ctx.node.name}", ["Sys.Audit"])
    records = [r for r in ctx.node.tasks.all() if audit or r["user"] == ctx.user]
    records = [r for r in records if _task_matches(r, params)]
    start, limit = int(params.get("start", 0)), int(params.get("limit", 50))
    return [_task_entry(r) for r in records[start:start + limit]]


def _task_matches(record: dict, params: dict[str, Any]) -> bool:
    source = params.get("source", "archive")
    running = record["status"] == "running"
    checks = [
        source == "all" or (source == "active") == running,
        "vmid" not in params or record["id"] == str(params["vmid"]),
        "typefilter" not in params or record["type"] == params["typefilter"],
        "userfilter" not in params or params["userfilter"] in record["user"],
        not params.get("errors") or record.get("exitstatus", "OK") != "OK",
        "since" not in params or record["starttime"] >= params["since"],
        "until" not in params or record["starttime"] <= params["until"],
        "statusfilter" not in params or _status_class(record) in params["statusfilter"].split(","),
    ]
    return all(checks)


def _status_class(record: dict) -> str:
    exit_status = record.get("exitstatus")
    if record["status"] == "running":
        return "running"
    if exit_status == "OK":
        return "ok"
    return "warning" if str(exit_status).startswith("WARNINGS") else "error"


def _task_entry(record: dict) -> dict:
    entry = {k: record[k] for k in ("upid", "node", "pid", "pstart", "starttime", "type", "id", "user")}
    if record["status"] == "stopped":
        entry.update(status=record["exitstatus"], endtime=record["endtime"])
    return entry


@api("GET", TASK + "/status")
def task_status(ctx: RequestContext, params: dict[str, Any]) -> Any:
    record = _task(ctx, params)
    return {k: v for k, v in record.items() if k != "endtime"}


@api("GET", TASK + "/log")
def task_log(ctx: RequestContext, params: dict[str, Any]) -> Any:
    _task(ctx, params)
    lines = ctx.node.tasks.log(params["upid"])
    start, limit = int(params.get("start", 0)), int(params.get("limit", 50))
    return [{"n": n + 1, "t": t} for n, t in enumerate(lines)][start:start + limit]

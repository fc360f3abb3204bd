"""The lab's pieces without containers: schema validation, property strings, tokens and ACLs, UPIDs."""

from __future__ import annotations

import pytest

from lab import lxc
from lab.access import Access
from lab.apischema import ApiSchema
from lab.errors import ApiError
from lab.node import Node
from lab.pveconf import format_props, parse_props, read_conf, write_conf
from lab.tasks import Upid

SCHEMA = ApiSchema.load()


def endpoint(method: str, path: str):
    found, params, _ = SCHEMA.route(method, path)
    assert found is not None, path
    return found, params


def test_routes_fill_path_parameters():
    found, params = endpoint("POST", "/nodes/pve01/lxc/457/status/start")
    assert found.path == "/nodes/{node}/lxc/{vmid}/status/start"
    assert params == {"node": "pve01", "vmid": "457"}
    _, params = endpoint("DELETE", "/nodes/pve01/storage/local/content/local:vztmpl/t.tar.zst")
    assert params["volume"] == "local:vztmpl/t.tar.zst"
    assert SCHEMA.route("PATCH", "/version")[0] is None and SCHEMA.route("PATCH", "/version")[2]


def test_valid_create_parameters_are_typed():
    create, path = endpoint("POST", "/nodes/pve01/lxc")
    typed = create.validate({**path, "vmid": "457", "ostemplate": "local:vztmpl/t.tar.zst",
                             "unprivileged": "true", "features": "nesting=1", "memory": "2048",
                             "net0": "name=eth0,bridge=mrdlab0,ip=10.157.0.57/24,gw=10.157.0.1",
                             "mp0": "local-lvm:1,mp=/var/lib/meridian,backup=1", "tags": "a;b"})
    assert typed["vmid"] == 457 and typed["unprivileged"] == 1 and typed["memory"] == 2048


@pytest.mark.parametrize(
    ("params", "errors"),
    [
        ({"vmid": "99"}, {"vmid": "value must have a minimum value of 100"}),
        ({"vmid": "x"}, {"vmid": "type check ('integer') failed - got 'x'"}),
        ({"unprivileged": "maybe"}, {"unprivileged": "type check ('boolean') failed - got 'maybe'"}),
        ({"arch": "sparc"}, {"arch": "value 'sparc' does not have a value in the enumeration "
                                     "'amd64, i386, arm64, armhf, riscv32, riscv64'"}),
        ({"features": "nesting=1,warp=1"},
         {"features": "invalid format - property 'warp' is not defined in the format"}),
        ({"net0": "name=eth0,ip=10.0.0.300/24"}, {"net0": "invalid format - ip: invalid format - invalid IPv4 config"}),
        ({"net99": "name=eth0"}, {"net99": "property is not defined in schema and the schema does not allow "
                                           "additional properties"}),
        ({"mp0": "local-lvm:1"}, {"mp0": "invalid format - property 'mp' is missing"}),
        ({"ostemplate": None}, {"ostemplate": "property is missing and it is not optional"}),
    ],
)
def test_bad_create_parameters_are_named(params, errors):
    create, path = endpoint("POST", "/nodes/pve01/lxc")
    raw = {**path, "vmid": "457", "ostemplate": "local:vztmpl/t.tar.zst", **params}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ApiError) as caught:
        create.validate(raw)
    assert caught.value.status == 400 and caught.value.message == "Parameter verification failed."
    assert caught.value.errors == errors


def test_property_strings_round_trip():
    text = "local-lvm:vm-457-disk-1,mp=/var/lib/meridian,backup=1"
    props = parse_props(text, "volume")
    assert props == {"volume": "local-lvm:vm-457-disk-1", "mp": "/var/lib/meridian", "backup": "1"}
    assert format_props(props, "volume") == text
    with pytest.raises(ValueError, match="duplicate key 'mp'"):
        parse_props("mp=/a,mp=/b")


def test_config_file_keeps_description_and_tags(tmp_path):
    conf = {"description": "first\n  second", "tags": "meridian-appliance;x", "memory": "2048"}
    write_conf(tmp_path / "457.conf", conf)
    assert (tmp_path / "457.conf").read_text().startswith("#first\n#  second\n")
    assert read_conf(tmp_path / "457.conf") == conf


def test_tokens_acls_and_pools(tmp_path):
    acc = Access(tmp_path / "access.json")
    acc.ensure_pool("meridian")
    acl = [("/pool/meridian", "PVEVMAdmin"), ("/storage/local", "PVEDatastoreUser")]
    secret = acc.add_token("pipeline@pve!lab", acl)
    assert acc.authenticate(f"PVEAPIToken=pipeline@pve!lab={secret}") == "pipeline@pve!lab"
    assert acc.authenticate(f"PVEAPIToken=pipeline@pve!lab={secret}x") is None
    assert acc.authenticate(f"PVEAPIToken=other@pve!lab={secret}") is None
    assert (tmp_path / "access.json").stat().st_mode & 0o777 == 0o600
    assert secret not in (tmp_path / "access.json").read_text()
    assert acc.missing("pipeline@pve!lab", "/vms/457", ["VM.PowerMgmt"]) == "VM.PowerMgmt"
    acc.set_pool(457, "meridian")  # the pool's ACL now covers /vms/457
    assert acc.missing("pipeline@pve!lab", "/vms/457", ["VM.PowerMgmt", "VM.Allocate"]) is None
    assert acc.missing("pipeline@pve!lab", "/storage/local", ["Datastore.Allocate"]) == "Datastore.Allocate"
    acc.set_pool(457, None)
    assert acc.missing("pipeline@pve!lab", "/vms/457", ["VM.Audit"]) == "VM.Audit"
    acc.set_acl("pipeline@pve!lab", [*acl, ("/storage/local", "PVEDatastoreAdmin")])  # roles add up
    privs = ["Datastore.Allocate", "Datastore.AllocateTemplate"]
    assert acc.missing("pipeline@pve!lab", "/storage/local", privs) is None
    assert acc.authenticate(f"PVEAPIToken=pipeline@pve!lab={secret}") == "pipeline@pve!lab"


def test_upid_format_round_trips():
    upid = Upid("pve01", 0x1234, 0xABCDEF, 0x6B081D2D, "vzstart", "457", "pipeline@pve!lab")
    assert str(upid) == "UPID:pve01:00001234:00ABCDEF:6B081D2D:vzstart:457:pipeline@pve!lab:"
    assert Upid.parse(str(upid)) == upid
    assert Upid.parse("UPID:pve01:zz") is None


def test_the_lab_that_has_to_recreate_the_bridge_owns_it(tmp_path, monkeypatch):
    """Another lab's `down` may have removed the shared bridge while this lab's containers were
    stopped: the next start makes it again, and this lab's `down` removes it."""
    node = Node(tmp_path)
    monkeypatch.setattr(lxc, "ensure_bridge", lambda: False)  # there: someone else's
    node.ensure_bridge()
    assert node.owned() == {}
    (tmp_path / "owned.json").write_text('{"other": "kept"}')
    monkeypatch.setattr(lxc, "ensure_bridge", lambda: True)  # gone: made again here
    node.ensure_bridge()
    assert node.owned() == {"other": "kept", "bridge": lxc.BRIDGE}

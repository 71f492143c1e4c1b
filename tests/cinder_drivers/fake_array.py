"""A small Cinder volume driver for the tests: an in-memory iSCSI array.

It subclasses Cinder's real ``cinder.volume.driver.VolumeDriver`` and behaves
like a vendor driver: options of its own (one secret), LUNs on an "array"
kept per backend name (so they survive a backend restart in this process),
realistic model updates, iSCSI connection info with CHAP, and calls into
Cinder's database API the way drivers make them (volume types and QoS specs,
re-reading the volume, admin metadata saved through the object). It records
what it saw, for the tests to check.

Importing it needs Cinder (never ``cinder.tests``, which monkeypatches).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from cinder import context as cinder_context
from cinder import exception, objects
from cinder.volume import configuration, driver, volume_types
from oslo_config import cfg

fake_array_opts = [
    cfg.StrOpt("fake_array_pool", default="pool-a", help="The array pool volumes go to."),
    cfg.StrOpt("fake_array_password", secret=True, max_length=32,
               help="The array's management password."),
    cfg.FloatOpt("fake_array_delay", default=0.0, min=0.0,
                 help="Seconds every data-path call takes."),
    cfg.ListOpt("fake_array_fail", default=[], help="Methods that fail."),
    cfg.IPOpt("fake_array_portal_ip", default="192.0.2.10", help="The iSCSI portal."),
]
cfg.CONF.register_opts(fake_array_opts, group=configuration.SHARED_CONF_GROUP)

CHAP_USER = "chap-user"
CHAP_SECRET = "chap-secret-123"


@dataclass
class Lun:
    size: int
    number: int
    source: str | None = None


@dataclass
class Array:
    luns: dict[str, Lun] = field(default_factory=dict)
    snapshots: dict[str, Lun] = field(default_factory=dict)
    exports: set[str] = field(default_factory=set)
    mappings: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    next_lun: int = 1


#: The arrays, by backend name; tests may clear this.
ARRAYS: dict[str, Array] = defaultdict(Array)
#: What the drivers saw, by backend name (for assertions).
SEEN: dict[str, list[tuple[str, Any]]] = defaultdict(list)


class ArrayError(exception.VolumeBackendAPIException):
    """The fake array refused an operation."""


class FakeArrayDriver(driver.VolumeDriver):
    """An iSCSI "array" in memory."""

    VERSION = "1.0.0"
    CI_WIKI_NAME = "aiocinder_tests"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(fake_array_opts)
        self.backend_name = self.configuration.safe_get("volume_backend_name")
        self.array: Array | None = None

    @staticmethod
    def get_driver_options() -> list[cfg.Opt]:
        return fake_array_opts

    # -- helpers -----------------------------------------------------------------

    def _step(self, method: str, **seen: Any) -> None:
        SEEN[self.backend_name].append((method, seen))
        if self.configuration.fake_array_delay:
            time.sleep(self.configuration.fake_array_delay)
        if method in self.configuration.fake_array_fail:
            raise ArrayError(data=f"array refused {method}")

    @property
    def _array(self) -> Array:
        assert self.array is not None, "do_setup was not called"
        return self.array

    def _new_lun(self, name: str, size: int, source: str | None = None) -> Lun:
        array = self._array
        if name in array.luns:
            raise ArrayError(data=f"{name} exists")
        lun = Lun(size, array.next_lun, source)
        array.next_lun += 1
        array.luns[name] = lun
        return lun

    def _location(self, name: str) -> str:
        return f"fake://{self.configuration.fake_array_pool}/{name}"

    def _type_info(self, volume: objects.Volume) -> dict[str, Any]:
        """What a vendor driver reads of a volume's type, through Cinder's APIs."""
        type_id = volume.volume_type_id
        specs = volume_types.get_volume_type_extra_specs(type_id)
        qos = volume_types.get_volume_type_qos_specs(type_id)["qos_specs"]
        return {"type_name": volume.volume_type.name, "extra_specs": dict(specs),
                "qos": None if qos is None else dict(qos["specs"]),
                "qos_from_object": (None if volume.volume_type.qos_specs is None
                                    else dict(volume.volume_type.qos_specs.specs))}

    # -- setup and stats ------------------------------------------------------------

    def do_setup(self, context: Any) -> None:
        self.array = ARRAYS[self.backend_name]
        SEEN[self.backend_name].append(("do_setup", {}))

    def check_for_setup_error(self) -> None:
        if not self.configuration.fake_array_password:
            raise ArrayError(data="fake_array_password is required")

    def _update_volume_stats(self) -> None:
        used = sum(lun.size for lun in self._array.luns.values())
        # a legacy report, without pools: aiocinder makes the one pool
        self._stats = {
            "volume_backend_name": self.backend_name,
            "vendor_name": "Fake Arrays Inc.",
            "driver_version": self.VERSION,
            "storage_protocol": "iSCSI",
            "total_capacity_gb": 1000,
            "free_capacity_gb": 1000 - used,
            "reserved_percentage": 0,
            "QoS_support": True,
            "thin_provisioning_support": True,
            "multiattach": True,
        }

    # -- volumes ------------------------------------------------------------------------

    def create_volume(self, volume: objects.Volume) -> dict[str, Any]:
        # Drivers read the volume back and its type's specs through Cinder's DB API
        # while the volume is still being created.
        ctxt = cinder_context.get_admin_context()
        again = objects.Volume.get_by_id(ctxt, volume.id)
        self._step("create_volume", status_seen=again.status, size=volume.size,
                   name=volume.name, host=volume.host, **self._type_info(volume))
        lun = self._new_lun(volume.name, volume.size)
        # ...and keep array facts in admin metadata, saved through the object
        volume.admin_metadata["fake_lun"] = str(lun.number)
        with volume.obj_as_admin():
            volume.save()
        return {"provider_location": self._location(volume.name),
                "provider_id": f"lun-{lun.number}",
                "replication_status": "disabled"}  # a field aiocinder does not keep

    def delete_volume(self, volume: objects.Volume) -> None:
        self._step("delete_volume", name=volume.name)
        self._array.luns.pop(volume.name, None)

    def create_cloned_volume(self, volume: objects.Volume, src_vref: objects.Volume
                             ) -> dict[str, Any]:
        self._step("create_cloned_volume", source=src_vref.name,
                   source_lun=src_vref.admin_metadata.get("fake_lun"))
        if src_vref.name not in self._array.luns:
            raise ArrayError(data=f"no source {src_vref.name}")
        lun = self._new_lun(volume.name, volume.size, source=src_vref.name)
        volume.admin_metadata["fake_lun"] = str(lun.number)
        return {"provider_location": self._location(volume.name),
                "provider_id": f"lun-{lun.number}"}

    def create_volume_from_snapshot(self, volume: objects.Volume,
                                    snapshot: objects.Snapshot) -> dict[str, Any]:
        self._step("create_volume_from_snapshot", snapshot=snapshot.name,
                   snapshot_volume=snapshot.volume.name, size=volume.size)
        if snapshot.name not in self._array.snapshots:
            raise ArrayError(data=f"no snapshot {snapshot.name}")
        lun = self._new_lun(volume.name, volume.size, source=snapshot.name)
        return {"provider_location": self._location(volume.name),
                "provider_id": f"lun-{lun.number}",
                "admin_metadata": {**volume.admin_metadata, "fake_lun": str(lun.number)}}

    def extend_volume(self, volume: objects.Volume, new_size: int) -> None:
        self._step("extend_volume", name=volume.name, status=volume.status, new_size=new_size)
        self._array.luns[volume.name].size = new_size
        volume.admin_metadata["fake_extended"] = str(new_size)

    # -- snapshots ----------------------------------------------------------------------

    def create_snapshot(self, snapshot: objects.Snapshot) -> dict[str, Any]:
        # A thread of the driver's own reads the source volume from Cinder's DB API.
        found: dict[str, Any] = {}

        def look() -> None:
            ctxt = cinder_context.get_admin_context()
            try:
                found["status"] = objects.Volume.get_by_id(ctxt, snapshot.volume_id).status
            except Exception as exc:  # reported below
                found["error"] = exc

        worker = threading.Thread(target=look)
        worker.start()
        worker.join(30)
        if "error" in found:
            raise found["error"]
        self._step("create_snapshot", name=snapshot.name, volume=snapshot.volume.name,
                   volume_status_from_thread=found.get("status"))
        source = self._array.luns[snapshot.volume.name]
        self._array.snapshots[snapshot.name] = Lun(source.size, 0, snapshot.volume.name)
        return {"provider_location": self._location(snapshot.name), "progress": "100%"}

    def delete_snapshot(self, snapshot: objects.Snapshot) -> None:
        self._step("delete_snapshot", name=snapshot.name)
        self._array.snapshots.pop(snapshot.name, None)

    # -- exports and connections --------------------------------------------------------

    def ensure_export(self, context: Any, volume: objects.Volume) -> None:
        """The array keeps its exports across restarts: only check the LUN is there."""
        if volume.name not in self._array.luns:
            raise ArrayError(data=f"no LUN {volume.name} to export")

    def create_export(self, context: Any, volume: objects.Volume,
                      connector: dict[str, Any]) -> dict[str, Any]:
        self._step("create_export", name=volume.name)
        self._array.exports.add(volume.name)
        return {"provider_auth": f"CHAP {CHAP_USER} {CHAP_SECRET}"}

    def remove_export(self, context: Any, volume: objects.Volume) -> None:
        self._step("remove_export", name=volume.name)
        self._array.exports.discard(volume.name)

    def validate_connector(self, connector: dict[str, Any]) -> None:
        if "initiator" not in connector:
            raise exception.InvalidConnectorException(missing="initiator")

    def initialize_connection(self, volume: objects.Volume,
                              connector: dict[str, Any]) -> dict[str, Any]:
        self._step("initialize_connection", name=volume.name,
                   attachments=len(volume.volume_attachment),
                   provider_auth=volume.provider_auth)
        lun = self._array.luns[volume.name]
        self._array.mappings[volume.name].add(connector["initiator"])
        _method, user, secret = volume.provider_auth.split()
        return {
            "driver_volume_type": "iscsi",
            "data": {
                "target_discovered": False,
                "target_iqn": f"iqn.2010-10.org.example:{volume.name}",
                "target_portal": f"{self.configuration.fake_array_portal_ip}:3260",
                "target_lun": lun.number,
                "volume_id": volume.id,
                "auth_method": "CHAP",
                "auth_username": user,
                "auth_password": secret,
                "discard": True,
            },
        }

    def terminate_connection(self, volume: objects.Volume, connector: dict[str, Any] | None,
                             **kwargs: Any) -> None:
        self._step("terminate_connection", name=volume.name,
                   attachments=len(volume.volume_attachment), force=kwargs.get("force"))
        if connector is None:
            self._array.mappings.pop(volume.name, None)
        else:
            self._array.mappings[volume.name].discard(connector.get("initiator"))


#: The options of a backend on this driver, unless a test says otherwise.
FAKE_OPTIONS: dict[str, Any] = {
    "volume_driver": FakeArrayDriver,
    "fake_array_password": "array-s3cret-pw",
}

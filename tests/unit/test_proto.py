"""Our .proto files and generated stubs: importable, not drifted, and wire compatible.

The expected field numbers, wire types and names below are restated from the fact tables
(shared/reference/upstream-driver-and-providers.md section 1 and csi-spec-facts.md), not read
from our own descriptors, so a wrong number in a .proto file fails here.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as _descriptor
from google.protobuf import descriptor_pb2, wrappers_pb2

from dew_csi._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from dew_csi._proto.provider.v1alpha1 import service_pb2, service_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "src" / "dew_csi" / "_proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")

EXPECTED_MODULES = {
    "dew_csi._proto.csi.v1.csi_pb2",
    "dew_csi._proto.csi.v1.csi_pb2_grpc",
    "dew_csi._proto.provider.v1alpha1.service_pb2",
    "dew_csi._proto.provider.v1alpha1.service_pb2_grpc",
}

# Protobuf wire types.
VARINT, I64, LEN, I32 = 0, 1, 2, 5


# --------------------------------------------------------------------------- helpers


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def walk(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """Decode one message level into (field number, wire type, value) in wire order."""
    fields: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        value: int | bytes
        if wire_type == VARINT:
            value, pos = _read_varint(data, pos)
        elif wire_type == LEN:
            length, pos = _read_varint(data, pos)
            value = data[pos : pos + length]
            if len(value) != length:
                raise ValueError("truncated length-delimited field")
            pos += length
        elif wire_type == I64:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire_type == I32:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unexpected wire type {wire_type}")
        fields.append((number, wire_type, value))
    return fields


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def enc_len(number: int, payload: bytes | str) -> bytes:
    raw = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | LEN) + _varint(len(raw)) + raw


def enc_varint(number: int, value: int) -> bytes:
    return _varint(number << 3 | VARINT) + _varint(value)


def enc_map_entry(number: int, key: str, value: str) -> bytes:
    return enc_len(number, enc_len(1, key) + enc_len(2, value))


def _single(fields: list[tuple[int, int, int | bytes]], number: int) -> tuple[int, int | bytes]:
    matches = [(wt, v) for n, wt, v in fields if n == number]
    assert len(matches) == 1, f"field {number}: {matches}"
    return matches[0]


def _syntax(file_descriptor: _descriptor.FileDescriptor) -> str:
    return descriptor_pb2.FileDescriptorProto.FromString(file_descriptor.serialized_pb).syntax


def _all_messages(file_descriptor: _descriptor.FileDescriptor) -> Iterator[_descriptor.Descriptor]:
    def visit(message: _descriptor.Descriptor) -> Iterator[_descriptor.Descriptor]:
        yield message
        for nested in message.nested_types:
            yield from visit(nested)

    for top in file_descriptor.message_types_by_name.values():
        yield from visit(top)


# ------------------------------------------------------------------ import and drift


def test_every_generated_module_is_committed_and_imports() -> None:
    found = {
        ".".join(path.relative_to(REPO_ROOT / "src").with_suffix("").parts)
        for path in PROTO_DIR.rglob("*_pb2*.py")
    }
    assert found == EXPECTED_MODULES
    for name in sorted(found):
        importlib.import_module(name)


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh_root = tmp_path / "dew_csi" / "_proto"

    def generated(root: Path) -> dict[str, bytes]:
        return {
            str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.name.endswith(GENERATED_SUFFIXES)
        }

    fresh, committed = generated(fresh_root), generated(PROTO_DIR)
    assert sorted(fresh) == sorted(committed), "generated file set differs: run gen_protos.py"
    drifted = [name for name in fresh if fresh[name] != committed[name]]
    assert not drifted, f"stale stubs, run `python scripts/gen_protos.py`: {drifted}"


def test_generated_grpc_modules_import_their_pb2_by_package_path() -> None:
    # The point of placing the .proto files under src/: imports need no patching.
    csi_grpc = (PROTO_DIR / "csi" / "v1" / "csi_pb2_grpc.py").read_text()
    provider_grpc = (PROTO_DIR / "provider" / "v1alpha1" / "service_pb2_grpc.py").read_text()
    assert "from dew_csi._proto.csi.v1 import csi_pb2 " in csi_grpc
    assert "from dew_csi._proto.provider.v1alpha1 import service_pb2 " in provider_grpc


# ------------------------------------------------------------------ provider facts

_T = _descriptor.FieldDescriptor
STRING, BYTES, INT32, INT64, BOOL, ENUM, MESSAGE = (
    _T.TYPE_STRING,
    _T.TYPE_BYTES,
    _T.TYPE_INT32,
    _T.TYPE_INT64,
    _T.TYPE_BOOL,
    _T.TYPE_ENUM,
    _T.TYPE_MESSAGE,
)
# A map field is a repeated message on the wire and in descriptors; "map" marks it here.
ONE, MANY, MAP = "singular", "repeated", "map"

# message -> {field name: (number, type, label, message type full name or None)}
PROVIDER_FACTS: dict[str, dict[str, tuple[int, int, str, str | None]]] = {
    "VersionRequest": {"version": (1, STRING, ONE, None)},
    "VersionResponse": {
        "version": (1, STRING, ONE, None),
        "runtime_name": (2, STRING, ONE, None),
        "runtime_version": (3, STRING, ONE, None),
    },
    "MountRequest": {
        "attributes": (1, STRING, ONE, None),
        "secrets": (2, STRING, ONE, None),
        "target_path": (3, STRING, ONE, None),
        "permission": (4, STRING, ONE, None),
        "current_object_version": (5, MESSAGE, MANY, "v1alpha1.ObjectVersion"),
    },
    "MountResponse": {
        "object_version": (1, MESSAGE, MANY, "v1alpha1.ObjectVersion"),
        "error": (2, MESSAGE, ONE, "v1alpha1.Error"),
        "files": (3, MESSAGE, MANY, "v1alpha1.File"),
    },
    "File": {
        "path": (1, STRING, ONE, None),
        "mode": (2, INT32, ONE, None),
        "contents": (3, BYTES, ONE, None),
    },
    "ObjectVersion": {"id": (1, STRING, ONE, None), "version": (2, STRING, ONE, None)},
    "Error": {"code": (1, STRING, ONE, None)},
}


def _shape(field: _descriptor.FieldDescriptor) -> tuple[int, int, str, str | None]:
    message_type = field.message_type
    is_map = message_type is not None and message_type.GetOptions().map_entry
    if is_map:
        label = MAP
    elif field.is_repeated:
        label = MANY
    else:
        label = ONE
    type_name = None if message_type is None or is_map else message_type.full_name
    return field.number, field.type, label, type_name


def _fields_of(message: _descriptor.Descriptor) -> dict[str, tuple[int, int, str, str | None]]:
    return {field.name: _shape(field) for field in message.fields}


def test_provider_package_service_and_methods() -> None:
    file = service_pb2.DESCRIPTOR
    assert file.package == "v1alpha1"
    assert _syntax(file) == "proto3"
    service = file.services_by_name["CSIDriverProvider"]
    assert {
        m.full_name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods
    } == {
        "v1alpha1.CSIDriverProvider.Version": (
            "v1alpha1.VersionRequest",
            "v1alpha1.VersionResponse",
        ),
        "v1alpha1.CSIDriverProvider.Mount": ("v1alpha1.MountRequest", "v1alpha1.MountResponse"),
    }
    assert not any(m.client_streaming for m in service.methods)
    assert not any(m.server_streaming for m in service.methods)


@pytest.mark.parametrize("message_name", sorted(PROVIDER_FACTS))
def test_provider_message_fields_match_the_fact_table(message_name: str) -> None:
    assert set(service_pb2.DESCRIPTOR.message_types_by_name) == set(PROVIDER_FACTS)
    message = service_pb2.DESCRIPTOR.message_types_by_name[message_name]
    assert _fields_of(message) == PROVIDER_FACTS[message_name]


def test_mount_request_as_the_go_driver_encodes_it_decodes_into_our_fields() -> None:
    # Bytes built by hand from the fact table, the way the upstream driver sends them.
    attributes = json.dumps(
        {"objects": "- objectName: secret_1", "csi.storage.k8s.io/pod.name": "p"}
    )
    wire = (
        enc_len(1, attributes)
        + enc_len(2, "null")
        + enc_len(3, "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount")
        + enc_len(4, "420")
        + enc_len(5, enc_len(1, "secret_1") + enc_len(2, "v1"))
        + enc_len(5, enc_len(1, "secret_2") + enc_len(2, "v7"))
    )
    request = service_pb2.MountRequest.FromString(wire)
    assert request.attributes == attributes
    assert request.secrets == "null"
    assert request.target_path.endswith("/mount")
    assert request.permission == "420"
    assert [(v.id, v.version) for v in request.current_object_version] == [
        ("secret_1", "v1"),
        ("secret_2", "v7"),
    ]
    # And our encoding of the same request is byte for byte what the driver sends.
    assert request.SerializeToString() == wire


def test_mount_response_encodes_the_numbers_the_go_driver_reads() -> None:
    response = service_pb2.MountResponse(
        object_version=[service_pb2.ObjectVersion(id="secret_test", version="v3")],
        error=service_pb2.Error(code="AuthorizationFailed"),
        files=[service_pb2.File(path="secret_test", mode=0o644, contents=b"\x00pw\xff")],
    )
    top = walk(response.SerializeToString())
    assert [(n, wt) for n, wt, _ in top] == [(1, LEN), (2, LEN), (3, LEN)]

    _, version_bytes = _single(top, 1)
    assert isinstance(version_bytes, bytes)
    assert walk(version_bytes) == [(1, LEN, b"secret_test"), (2, LEN, b"v3")]

    _, error_bytes = _single(top, 2)
    assert isinstance(error_bytes, bytes)
    assert walk(error_bytes) == [(1, LEN, b"AuthorizationFailed")]

    _, file_bytes = _single(top, 3)
    assert isinstance(file_bytes, bytes)
    # mode is a varint (int32) holding the decimal value 420, contents raw bytes.
    assert walk(file_bytes) == [(1, LEN, b"secret_test"), (2, VARINT, 420), (3, LEN, b"\x00pw\xff")]


def test_version_messages_on_the_wire() -> None:
    assert walk(service_pb2.VersionRequest(version="v1alpha1").SerializeToString()) == [
        (1, LEN, b"v1alpha1")
    ]
    response = service_pb2.VersionResponse(
        version="v1alpha1", runtime_name="dew-provider", runtime_version="0.1.0"
    )
    assert walk(response.SerializeToString()) == [
        (1, LEN, b"v1alpha1"),
        (2, LEN, b"dew-provider"),
        (3, LEN, b"0.1.0"),
    ]


# ----------------------------------------------------------------------- CSI facts

CSI_SERVICES = {
    "Identity": ["GetPluginInfo", "GetPluginCapabilities", "Probe"],
    "Controller": [
        "CreateVolume",
        "DeleteVolume",
        "ControllerPublishVolume",
        "ControllerUnpublishVolume",
        "ValidateVolumeCapabilities",
        "ListVolumes",
        "GetCapacity",
        "ControllerGetCapabilities",
        "CreateSnapshot",
        "DeleteSnapshot",
        "ListSnapshots",
        "GetSnapshot",
        "ControllerExpandVolume",
        "ControllerGetVolume",
        "ControllerModifyVolume",
    ],
    "Node": [
        "NodeStageVolume",
        "NodeUnstageVolume",
        "NodePublishVolume",
        "NodeUnpublishVolume",
        "NodeGetVolumeStats",
        "NodeExpandVolume",
        "NodeGetCapabilities",
        "NodeGetInfo",
    ],
}

# Messages the fact tables describe completely: every field, number, type and label.
CSI_FACTS: dict[str, dict[str, tuple[int, int, str, str | None]]] = {
    "GetPluginInfoRequest": {},
    "GetPluginInfoResponse": {
        "name": (1, STRING, ONE, None),
        "vendor_version": (2, STRING, ONE, None),
        "manifest": (3, MESSAGE, MAP, None),
    },
    "GetPluginCapabilitiesRequest": {},
    "GetPluginCapabilitiesResponse": {
        "capabilities": (1, MESSAGE, MANY, "csi.v1.PluginCapability")
    },
    "PluginCapability": {
        "service": (1, MESSAGE, ONE, "csi.v1.PluginCapability.Service"),
        "volume_expansion": (2, MESSAGE, ONE, "csi.v1.PluginCapability.VolumeExpansion"),
    },
    "PluginCapability.Service": {"type": (1, ENUM, ONE, None)},
    "PluginCapability.VolumeExpansion": {"type": (1, ENUM, ONE, None)},
    "ProbeRequest": {},
    "ProbeResponse": {"ready": (1, MESSAGE, ONE, "google.protobuf.BoolValue")},
    "NodeStageVolumeRequest": {
        "volume_id": (1, STRING, ONE, None),
        "publish_context": (2, MESSAGE, MAP, None),
        "staging_target_path": (3, STRING, ONE, None),
        "volume_capability": (4, MESSAGE, ONE, "csi.v1.VolumeCapability"),
        "secrets": (5, MESSAGE, MAP, None),
        "volume_context": (6, MESSAGE, MAP, None),
    },
    "NodeStageVolumeResponse": {},
    "NodeUnstageVolumeRequest": {
        "volume_id": (1, STRING, ONE, None),
        "staging_target_path": (2, STRING, ONE, None),
    },
    "NodeUnstageVolumeResponse": {},
    "NodePublishVolumeRequest": {
        "volume_id": (1, STRING, ONE, None),
        "publish_context": (2, MESSAGE, MAP, None),
        "staging_target_path": (3, STRING, ONE, None),
        "target_path": (4, STRING, ONE, None),
        "volume_capability": (5, MESSAGE, ONE, "csi.v1.VolumeCapability"),
        "readonly": (6, BOOL, ONE, None),
        "secrets": (7, MESSAGE, MAP, None),
        "volume_context": (8, MESSAGE, MAP, None),
    },
    "NodePublishVolumeResponse": {},
    "NodeUnpublishVolumeRequest": {
        "volume_id": (1, STRING, ONE, None),
        "target_path": (2, STRING, ONE, None),
    },
    "NodeUnpublishVolumeResponse": {},
    "NodeGetCapabilitiesRequest": {},
    "NodeGetCapabilitiesResponse": {
        "capabilities": (1, MESSAGE, MANY, "csi.v1.NodeServiceCapability")
    },
    "NodeServiceCapability": {"rpc": (1, MESSAGE, ONE, "csi.v1.NodeServiceCapability.RPC")},
    "NodeServiceCapability.RPC": {"type": (1, ENUM, ONE, None)},
    "NodeGetInfoRequest": {},
    "NodeGetInfoResponse": {
        "node_id": (1, STRING, ONE, None),
        "max_volumes_per_node": (2, INT64, ONE, None),
        "accessible_topology": (3, MESSAGE, ONE, "csi.v1.Topology"),
    },
    "Topology": {"segments": (1, MESSAGE, MAP, None)},
    "VolumeCapability": {
        "block": (1, MESSAGE, ONE, "csi.v1.VolumeCapability.BlockVolume"),
        "mount": (2, MESSAGE, ONE, "csi.v1.VolumeCapability.MountVolume"),
        "access_mode": (3, MESSAGE, ONE, "csi.v1.VolumeCapability.AccessMode"),
    },
    "VolumeCapability.BlockVolume": {},
    "VolumeCapability.MountVolume": {
        "fs_type": (1, STRING, ONE, None),
        "mount_flags": (2, STRING, MANY, None),
        "volume_mount_group": (3, STRING, ONE, None),
    },
    "VolumeCapability.AccessMode": {"mode": (1, ENUM, ONE, None)},
    "NodeGetVolumeStatsRequest": {
        "volume_id": (1, STRING, ONE, None),
        "volume_path": (2, STRING, ONE, None),
        "staging_target_path": (3, STRING, ONE, None),
    },
    "NodeGetVolumeStatsResponse": {
        "usage": (1, MESSAGE, MANY, "csi.v1.VolumeUsage"),
        "volume_condition": (2, MESSAGE, ONE, "csi.v1.VolumeCondition"),
    },
    "VolumeUsage": {
        "available": (1, INT64, ONE, None),
        "total": (2, INT64, ONE, None),
        "used": (3, INT64, ONE, None),
        "unit": (4, ENUM, ONE, None),
    },
    "VolumeCondition": {"abnormal": (1, BOOL, ONE, None), "message": (2, STRING, ONE, None)},
    "NodeExpandVolumeRequest": {
        "volume_id": (1, STRING, ONE, None),
        "volume_path": (2, STRING, ONE, None),
        "capacity_range": (3, MESSAGE, ONE, "csi.v1.CapacityRange"),
        "staging_target_path": (4, STRING, ONE, None),
        "volume_capability": (5, MESSAGE, ONE, "csi.v1.VolumeCapability"),
        "secrets": (6, MESSAGE, MAP, None),
    },
    "NodeExpandVolumeResponse": {"capacity_bytes": (1, INT64, ONE, None)},
    "CapacityRange": {
        "required_bytes": (1, INT64, ONE, None),
        "limit_bytes": (2, INT64, ONE, None),
    },
    "ControllerGetCapabilitiesRequest": {},
    "ControllerGetCapabilitiesResponse": {
        "capabilities": (1, MESSAGE, MANY, "csi.v1.ControllerServiceCapability")
    },
    "ControllerServiceCapability": {
        "rpc": (1, MESSAGE, ONE, "csi.v1.ControllerServiceCapability.RPC")
    },
    "ControllerServiceCapability.RPC": {"type": (1, ENUM, ONE, None)},
}

# Oneof membership as the fact tables give it.
CSI_ONEOFS = {
    "PluginCapability": {"type": {"service", "volume_expansion"}},
    "VolumeCapability": {"access_type": {"block", "mount"}},
    "NodeServiceCapability": {"type": {"rpc"}},
    "ControllerServiceCapability": {"type": {"rpc"}},
}

CSI_ENUMS = {
    "PluginCapability.Service.Type": {
        "UNKNOWN": 0,
        "CONTROLLER_SERVICE": 1,
        "VOLUME_ACCESSIBILITY_CONSTRAINTS": 2,
        "GROUP_CONTROLLER_SERVICE": 3,
        "SNAPSHOT_METADATA_SERVICE": 4,
    },
    "PluginCapability.VolumeExpansion.Type": {"UNKNOWN": 0, "ONLINE": 1, "OFFLINE": 2},
    "VolumeCapability.AccessMode.Mode": {
        "UNKNOWN": 0,
        "SINGLE_NODE_WRITER": 1,
        "SINGLE_NODE_READER_ONLY": 2,
        "MULTI_NODE_READER_ONLY": 3,
        "MULTI_NODE_SINGLE_WRITER": 4,
        "MULTI_NODE_MULTI_WRITER": 5,
        "SINGLE_NODE_SINGLE_WRITER": 6,
        "SINGLE_NODE_MULTI_WRITER": 7,
    },
    "VolumeUsage.Unit": {"UNKNOWN": 0, "BYTES": 1, "INODES": 2},
    "NodeServiceCapability.RPC.Type": {
        "UNKNOWN": 0,
        "STAGE_UNSTAGE_VOLUME": 1,
        "GET_VOLUME_STATS": 2,
        "EXPAND_VOLUME": 3,
        "VOLUME_CONDITION": 4,
        "SINGLE_NODE_MULTI_WRITER": 5,
        "VOLUME_MOUNT_GROUP": 6,
    },
    "ControllerServiceCapability.RPC.Type": {
        "UNKNOWN": 0,
        "CREATE_DELETE_VOLUME": 1,
        "PUBLISH_UNPUBLISH_VOLUME": 2,
        "LIST_VOLUMES": 3,
        "GET_CAPACITY": 4,
        "CREATE_DELETE_SNAPSHOT": 5,
        "LIST_SNAPSHOTS": 6,
        "CLONE_VOLUME": 7,
        "PUBLISH_READONLY": 8,
        "EXPAND_VOLUME": 9,
        "LIST_VOLUMES_PUBLISHED_NODES": 10,
        "VOLUME_CONDITION": 11,
        "GET_VOLUME": 12,
        "SINGLE_NODE_MULTI_WRITER": 13,
        "MODIFY_VOLUME": 14,
        "GET_SNAPSHOT": 15,
    },
}

# Enum values the spec marks alpha_enum_value.
CSI_ALPHA_ENUM_VALUES = {
    ("PluginCapability.Service.Type", "SNAPSHOT_METADATA_SERVICE"),
    ("VolumeCapability.AccessMode.Mode", "SINGLE_NODE_SINGLE_WRITER"),
    ("VolumeCapability.AccessMode.Mode", "SINGLE_NODE_MULTI_WRITER"),
    ("NodeServiceCapability.RPC.Type", "VOLUME_CONDITION"),
    ("NodeServiceCapability.RPC.Type", "SINGLE_NODE_MULTI_WRITER"),
    ("ControllerServiceCapability.RPC.Type", "VOLUME_CONDITION"),
    ("ControllerServiceCapability.RPC.Type", "GET_VOLUME"),
    ("ControllerServiceCapability.RPC.Type", "SINGLE_NODE_MULTI_WRITER"),
    ("ControllerServiceCapability.RPC.Type", "GET_SNAPSHOT"),
}

# csi-spec-facts.md section 5, for the messages we declare. The GroupController and
# SnapshotMetadata requests in that table are not declared at all (checked below).
CSI_SECRET_FIELDS = {
    ("NodeStageVolumeRequest", "secrets", 5),
    ("NodePublishVolumeRequest", "secrets", 7),
    ("NodeExpandVolumeRequest", "secrets", 6),
    ("CreateVolumeRequest", "secrets", 5),
    ("DeleteVolumeRequest", "secrets", 2),
    ("ControllerPublishVolumeRequest", "secrets", 5),
    ("ControllerUnpublishVolumeRequest", "secrets", 3),
    ("ValidateVolumeCapabilitiesRequest", "secrets", 5),
    ("ControllerModifyVolumeRequest", "secrets", 2),
    ("CreateSnapshotRequest", "secrets", 3),
    ("DeleteSnapshotRequest", "secrets", 2),
    ("ListSnapshotsRequest", "secrets", 5),
    ("GetSnapshotRequest", "secrets", 2),
    ("ControllerExpandVolumeRequest", "secrets", 3),
}
UNDECLARED_SECRET_CARRIERS = {
    "CreateVolumeGroupSnapshotRequest",
    "DeleteVolumeGroupSnapshotRequest",
    "GetVolumeGroupSnapshotRequest",
    "GetMetadataAllocatedRequest",
    "GetMetadataDeltaRequest",
}


def _csi_message(dotted: str) -> _descriptor.Descriptor:
    return csi_pb2.DESCRIPTOR.pool.FindMessageTypeByName("csi.v1." + dotted)


def test_csi_package_and_services() -> None:
    file = csi_pb2.DESCRIPTOR
    assert file.package == "csi.v1"
    assert _syntax(file) == "proto3"
    assert set(file.services_by_name) == set(CSI_SERVICES)
    for service_name, methods in CSI_SERVICES.items():
        service = file.services_by_name[service_name]
        assert [m.name for m in service.methods] == methods
        for method in service.methods:
            assert method.input_type.full_name == f"csi.v1.{method.name}Request"
            assert method.output_type.full_name == f"csi.v1.{method.name}Response"
            assert not method.client_streaming
            assert not method.server_streaming


@pytest.mark.parametrize("message_name", sorted(CSI_FACTS))
def test_csi_message_fields_match_the_fact_table(message_name: str) -> None:
    assert _fields_of(_csi_message(message_name)) == CSI_FACTS[message_name]


@pytest.mark.parametrize("message_name", sorted(CSI_ONEOFS))
def test_csi_oneofs_match_the_fact_table(message_name: str) -> None:
    message = _csi_message(message_name)
    oneofs = {o.name: {f.name for f in o.fields} for o in message.oneofs}
    assert oneofs == CSI_ONEOFS[message_name]


@pytest.mark.parametrize("enum_name", sorted(CSI_ENUMS))
def test_csi_enums_match_the_fact_table(enum_name: str) -> None:
    enum = csi_pb2.DESCRIPTOR.pool.FindEnumTypeByName("csi.v1." + enum_name)
    assert {v.name: v.number for v in enum.values} == CSI_ENUMS[enum_name]
    alpha = {v.name for v in enum.values if v.GetOptions().Extensions[csi_pb2.alpha_enum_value]}
    assert alpha == {value for name, value in CSI_ALPHA_ENUM_VALUES if name == enum_name}


def test_partial_controller_messages_hold_only_their_secrets() -> None:
    # Controller requests/responses beyond ControllerGetCapabilities are declared only so
    # the service is complete; they must not carry invented fields.
    controller = csi_pb2.DESCRIPTOR.services_by_name["Controller"]
    for method in controller.methods:
        if method.name == "ControllerGetCapabilities":
            continue
        request_fields = {(f.name, f.number) for f in method.input_type.fields}
        expected = {(n, num) for m, n, num in CSI_SECRET_FIELDS if m == method.input_type.name}
        assert request_fields == expected, method.name
        assert not method.output_type.fields, method.name


def test_option_extensions_are_declared_with_the_spec_numbers() -> None:
    extensions = csi_pb2.DESCRIPTOR.extensions_by_name
    expected = {
        "csi_secret": ("google.protobuf.FieldOptions", 1059),
        "alpha_field": ("google.protobuf.FieldOptions", 1060),
        "alpha_enum": ("google.protobuf.EnumOptions", 1060),
        "alpha_enum_value": ("google.protobuf.EnumValueOptions", 1060),
        "alpha_message": ("google.protobuf.MessageOptions", 1060),
        "alpha_method": ("google.protobuf.MethodOptions", 1060),
        "alpha_service": ("google.protobuf.ServiceOptions", 1060),
    }
    actual = {
        name: (getattr(ext.containing_type, "full_name", None), ext.number)
        for name, ext in extensions.items()
    }
    assert actual == expected
    assert all(ext.type == BOOL for ext in extensions.values())
    assert extensions["csi_secret"].full_name == "csi.v1.csi_secret"


def test_csi_secret_is_set_on_exactly_the_listed_fields() -> None:
    marked = {
        (message.full_name.removeprefix("csi.v1."), field.name, field.number)
        for message in _all_messages(csi_pb2.DESCRIPTOR)
        for field in message.fields
        if field.GetOptions().Extensions[csi_pb2.csi_secret]
    }
    assert marked == CSI_SECRET_FIELDS
    declared = set(csi_pb2.DESCRIPTOR.message_types_by_name)
    assert not declared & UNDECLARED_SECRET_CARRIERS


def test_other_alpha_markers() -> None:
    alpha_fields = {
        (message.name, field.name)
        for message in _all_messages(csi_pb2.DESCRIPTOR)
        for field in message.fields
        if field.GetOptions().Extensions[csi_pb2.alpha_field]
    }
    assert alpha_fields == {
        ("NodeExpandVolumeRequest", "secrets"),
        ("NodeGetVolumeStatsResponse", "volume_condition"),
    }
    alpha_messages = {
        m.name
        for m in _all_messages(csi_pb2.DESCRIPTOR)
        if m.GetOptions().Extensions[csi_pb2.alpha_message]
    }
    assert alpha_messages == {"VolumeCondition"}
    controller = csi_pb2.DESCRIPTOR.services_by_name["Controller"]
    alpha_methods = {
        m.name for m in controller.methods if m.GetOptions().Extensions[csi_pb2.alpha_method]
    }
    assert alpha_methods == {"GetSnapshot", "ControllerGetVolume"}


def test_node_publish_request_on_the_wire() -> None:
    request = csi_pb2.NodePublishVolumeRequest(
        volume_id="csi-0123",
        publish_context={"pc": "1"},
        staging_target_path="/stage",
        target_path="/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount",
        volume_capability=csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(
                fs_type="tmpfs", mount_flags=["ro", "noexec"], volume_mount_group="1000"
            ),
            access_mode=csi_pb2.VolumeCapability.AccessMode(
                mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_READER_ONLY
            ),
        ),
        readonly=True,
        secrets={"k": "s3cr3t"},
        volume_context={"secretProviderClass": "spc-test"},
    )
    top = walk(request.SerializeToString())
    assert [(n, wt) for n, wt, _ in top] == [
        (1, LEN),
        (2, LEN),
        (3, LEN),
        (4, LEN),
        (5, LEN),
        (6, VARINT),
        (7, LEN),
        (8, LEN),
    ]
    assert _single(top, 1) == (LEN, b"csi-0123")
    assert _single(top, 2) == (LEN, enc_len(1, "pc") + enc_len(2, "1"))
    assert _single(top, 3) == (LEN, b"/stage")
    assert _single(top, 6) == (VARINT, 1)
    # Maps are repeated entries with key = 1 and value = 2.
    assert _single(top, 7) == (LEN, enc_len(1, "k") + enc_len(2, "s3cr3t"))
    assert _single(top, 8) == (LEN, enc_len(1, "secretProviderClass") + enc_len(2, "spc-test"))

    _, capability = _single(top, 5)
    assert isinstance(capability, bytes)
    capability_fields = walk(capability)
    assert [(n, wt) for n, wt, _ in capability_fields] == [(2, LEN), (3, LEN)]
    _, mount = _single(capability_fields, 2)
    assert isinstance(mount, bytes)
    assert walk(mount) == [
        (1, LEN, b"tmpfs"),
        (2, LEN, b"ro"),
        (2, LEN, b"noexec"),
        (3, LEN, b"1000"),
    ]
    _, access_mode = _single(capability_fields, 3)
    assert access_mode == enc_varint(1, 2)


def test_node_publish_request_as_kubelet_encodes_it_decodes_into_our_fields() -> None:
    wire = (
        enc_len(1, "csi-abc")
        + enc_len(4, "/target")
        + enc_len(5, enc_len(2, b"") + enc_len(3, enc_varint(1, 1)))
        + enc_varint(6, 1)
        + enc_map_entry(7, "token", "x")
        + enc_map_entry(8, "csi.storage.k8s.io/pod.name", "nginx")
        + enc_map_entry(8, "secretProviderClass", "spc-test")
    )
    request = csi_pb2.NodePublishVolumeRequest.FromString(wire)
    assert request.volume_id == "csi-abc"
    assert request.target_path == "/target"
    assert request.volume_capability.WhichOneof("access_type") == "mount"
    assert request.volume_capability.access_mode.mode == 1
    assert request.readonly is True
    assert dict(request.secrets) == {"token": "x"}
    assert dict(request.volume_context) == {
        "csi.storage.k8s.io/pod.name": "nginx",
        "secretProviderClass": "spc-test",
    }


def test_probe_ready_is_a_bool_value_message_not_a_bool() -> None:
    assert walk(csi_pb2.ProbeResponse().SerializeToString()) == []  # absent: "ready"
    not_ready = csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=False))
    assert walk(not_ready.SerializeToString()) == [(1, LEN, b"")]
    ready = csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))
    assert walk(ready.SerializeToString()) == [(1, LEN, enc_varint(1, 1))]


def test_identity_and_capability_responses_on_the_wire() -> None:
    info = csi_pb2.GetPluginInfoResponse(
        name="secrets-store.csi.k8s.io", vendor_version="0.1.0", manifest={"a": "b"}
    )
    assert walk(info.SerializeToString()) == [
        (1, LEN, b"secrets-store.csi.k8s.io"),
        (2, LEN, b"0.1.0"),
        (3, LEN, enc_len(1, "a") + enc_len(2, "b")),
    ]
    node_caps = csi_pb2.NodeGetCapabilitiesResponse(
        capabilities=[
            csi_pb2.NodeServiceCapability(
                rpc=csi_pb2.NodeServiceCapability.RPC(
                    type=csi_pb2.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME
                )
            )
        ]
    )
    assert node_caps.SerializeToString() == enc_len(1, enc_len(1, enc_varint(1, 1)))
    info_response = csi_pb2.NodeGetInfoResponse(
        node_id="node-1",
        max_volumes_per_node=3,
        accessible_topology=csi_pb2.Topology(segments={"zone": "z1"}),
    )
    assert walk(info_response.SerializeToString()) == [
        (1, LEN, b"node-1"),
        (2, VARINT, 3),
        (3, LEN, enc_len(1, enc_len(1, "zone") + enc_len(2, "z1"))),
    ]


# ------------------------------------------------------------- gRPC over a unix socket


class _Provider(service_pb2_grpc.CSIDriverProviderServicer):
    def __init__(self) -> None:
        self.mount_requests: list[service_pb2.MountRequest] = []

    async def Version(
        self, request: service_pb2.VersionRequest, context: Any
    ) -> service_pb2.VersionResponse:
        return service_pb2.VersionResponse(
            version=request.version, runtime_name="test-provider", runtime_version="0.0.1"
        )

    async def Mount(
        self, request: service_pb2.MountRequest, context: Any
    ) -> service_pb2.MountResponse:
        self.mount_requests.append(request)
        return service_pb2.MountResponse(
            object_version=[service_pb2.ObjectVersion(id="secret_1", version="v1")],
            files=[service_pb2.File(path="secret_1", mode=420, contents=b"value")],
        )


class _Identity(csi_pb2_grpc.IdentityServicer):
    async def GetPluginInfo(
        self, request: csi_pb2.GetPluginInfoRequest, context: Any
    ) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name="secrets-store.csi.k8s.io", vendor_version="t")

    async def GetPluginCapabilities(
        self, request: csi_pb2.GetPluginCapabilitiesRequest, context: Any
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        return csi_pb2.GetPluginCapabilitiesResponse()

    async def Probe(self, request: csi_pb2.ProbeRequest, context: Any) -> csi_pb2.ProbeResponse:
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))


class _Node(csi_pb2_grpc.NodeServicer):
    """Implements only NodePublishVolume; the generated base answers the rest UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.published: list[csi_pb2.NodePublishVolumeRequest] = []

    async def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: Any
    ) -> csi_pb2.NodePublishVolumeResponse:
        if not request.target_path:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "target_path is required")
        self.published.append(request)
        return csi_pb2.NodePublishVolumeResponse()


async def test_provider_round_trip_over_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "cce.sock"
    provider = _Provider()
    server = grpc.aio.server()
    service_pb2_grpc.add_CSIDriverProviderServicer_to_server(provider, server)
    assert server.add_insecure_port(f"unix://{socket_path}") == 1
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
            stub = service_pb2_grpc.CSIDriverProviderStub(channel)
            version = await stub.Version(service_pb2.VersionRequest(version="v1alpha1"))
            assert (version.version, version.runtime_name) == ("v1alpha1", "test-provider")

            response = await stub.Mount(
                service_pb2.MountRequest(
                    attributes='{"objects":""}', secrets="null", permission="420"
                )
            )
            assert [(v.id, v.version) for v in response.object_version] == [("secret_1", "v1")]
            assert [(f.path, f.mode, f.contents) for f in response.files] == [
                ("secret_1", 420, b"value")
            ]

            # The exact method path the Go driver dials, with hand-encoded bytes.
            raw_mount = channel.unary_unary(
                "/v1alpha1.CSIDriverProvider/Mount",
                request_serializer=None,
                response_deserializer=None,
            )
            raw_reply = await raw_mount(enc_len(2, "null") + enc_len(4, "420"))
            assert isinstance(raw_reply, bytes)
            assert _single(walk(raw_reply), 1)[0] == LEN
        assert [r.secrets for r in provider.mount_requests] == ["null", "null"]
        assert provider.mount_requests[1].permission == "420"
    finally:
        await server.stop(None)


async def test_csi_round_trip_over_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "csi.sock"
    # The generated .pyi marks every servicer method abstract; at run time the base class
    # answers the methods we leave out UNIMPLEMENTED, which is what this test relies on.
    node = _Node()  # type: ignore[abstract]
    server = grpc.aio.server()
    csi_pb2_grpc.add_IdentityServicer_to_server(_Identity(), server)
    csi_pb2_grpc.add_NodeServicer_to_server(node, server)
    csi_pb2_grpc.add_ControllerServicer_to_server(
        csi_pb2_grpc.ControllerServicer(),  # type: ignore[abstract]
        server,
    )
    assert server.add_insecure_port(f"unix://{socket_path}") == 1
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
            identity = csi_pb2_grpc.IdentityStub(channel)
            info = await identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
            assert info.name == "secrets-store.csi.k8s.io"
            probe = await identity.Probe(csi_pb2.ProbeRequest())
            assert probe.HasField("ready")
            assert probe.ready.value is True

            node_stub = csi_pb2_grpc.NodeStub(channel)
            await node_stub.NodePublishVolume(
                csi_pb2.NodePublishVolumeRequest(
                    volume_id="v",
                    target_path="/t",
                    readonly=True,
                    secrets={"a": "b"},
                    volume_context={"secretProviderClass": "spc-test"},
                )
            )
            assert node.published[0].volume_context["secretProviderClass"] == "spc-test"
            assert dict(node.published[0].secrets) == {"a": "b"}

            with pytest.raises(grpc.aio.AioRpcError) as invalid:
                await node_stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(volume_id="v"))
            assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            with pytest.raises(grpc.aio.AioRpcError) as node_unimplemented:
                await node_stub.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest())
            assert node_unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED

            controller = csi_pb2_grpc.ControllerStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as controller_unimplemented:
                await controller.CreateVolume(csi_pb2.CreateVolumeRequest())
            assert controller_unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED

            # The path kubelet uses, independent of our stub classes.
            raw_info = channel.unary_unary(
                "/csi.v1.Identity/GetPluginInfo",
                request_serializer=None,
                response_deserializer=None,
            )
            assert walk(await raw_info(b""))[0] == (1, LEN, b"secrets-store.csi.k8s.io")
    finally:
        await server.stop(None)

"""Request bodies bound onto the Engine API's Go types, as dockerd's decoder binds them.

A policy that reads a create body differently from dockerd can be walked
around: Go's ``encoding/json`` matches keys without regard to case (a
lowercase ``hostconfig`` made a container privileged, and ``Binds`` spelled
with U+017F for its ``s`` was ``Binds``), merges a duplicate object into the one before it,
and lets a ``null`` leave a plain field as it was. This module gives the
body checks (``bodychecks``) and the heal path (``Image``) one reading, the
daemon's, of the fields they look at.

Rules:
- Fields are Go struct fields: a key names one when it equals the field's
  name, or folds to it (ASCII case, U+017F for ``s``, U+212A for ``k``,
  checked against Go's tables: nothing else folds to an ASCII letter).
- Refused (``Refused``, a ``ValueError``; the caller answers 400): a body
  that is not JSON or is nested past Go's 10,000 levels (``gojson``); an
  object holding two sibling keys that case-fold together or are the same;
  a key holding U+0130, U+017F or U+212A, which other decoders fold
  otherwise; a field read here whose value Go would not take (dockerd would
  answer 400 all the same). Refusing duplicates leaves nothing to merge: each
  field of each object is bound at most once, so Go's merging of objects,
  its reuse of a slice's elements and ``null`` keeping an earlier value
  never arise, and the reading is Go's without them (the tests hold it to
  an oracle that does all of that).
- The keys of data maps are data, not fields (``Labels``, ``Volumes``,
  ``ExposedPorts``, ``Sysctls``, ``PortBindings``, ``Tmpfs``,
  ``StorageOpt``, ``LogConfig.Config``, ``Annotations``,
  ``EndpointsConfig``, ``DriverOpts``, ``DriverConfig.Options``,
  ``VolumeOptions.Labels``, a device request's ``Options``): kept as
  written, case and all, the last of two equal keys winning, as a Go map
  keeps them. Their values are read as any other value.
- ``null`` binds a pointer, slice or map to nil (``None``) and leaves any
  other field at its zero value, so ``"MaskedPaths": null`` (which the
  docker CLI sends) is absent and ``"MaskedPaths": []`` is not.
- A create's host config is the one dockerd's ``getHostConfig`` takes, on
  20.10 and 26 alike: ``HostConfig`` when it is there and not null, else the
  deprecated host fields at the top level (``{"Privileged": true}`` beside
  ``Image`` is a privileged container).
- Only the fields the checks read are typed here; any other value is
  scanned for the sibling rules alone, without recursion, to any depth.
- Pure: bytes in, values out.

Theory of operation: ``gojson`` reads the text into ``Members`` (duplicates
kept). ``_bind`` walks it along a schema of ``Struct``, ``MapOf``,
``ListOf`` and scalar kinds written from moby's ``api/types`` (only the
fields read, and where the data maps are), refusing as it goes; a value of
kind ``SKIP`` is handed to ``_scan``, an explicit stack. The bound values
are plain dicts and lists, from which ``read_create``, ``read_exec`` and
``read_volume`` take the frozen records the checks are written against.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import gojson

_TRICKY = frozenset("\u0130\u017f\u212a")
"""Letters that fold to ASCII in some decoders and not others."""


class Refused(ValueError):
    """A body the checks do not read as dockerd would, so do not let through."""


class Scalar(enum.Enum):
    BOOL = "a boolean"
    STRING = "a string"
    STRINGS = "an array of strings"
    STRSLICE = "a string or an array of strings"
    """moby's ``strslice.StrSlice`` (``CapAdd``): its own decoder takes either."""
    SKIP = "any value"
    """Not read: scanned for the sibling rules only."""


@dataclass(frozen=True)
class Struct:
    fields: Mapping[str, Kind]
    pointer: bool = False
    """A pointer is nil after ``null``; a struct value stays as it was."""
    by_key: Mapping[str, str] = field(init=False, repr=False, compare=False)
    """A key, lowercased, to the field it names (no other letter folds to ASCII)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_key", {name.lower(): name for name in self.fields})


@dataclass(frozen=True)
class MapOf:
    """A Go map: its keys are data."""

    value: Kind


@dataclass(frozen=True)
class ListOf:
    item: Kind


Kind = Scalar | Struct | MapOf | ListOf

_ZERO: dict[Scalar, Any] = {
    Scalar.BOOL: False,
    Scalar.STRING: "",
    Scalar.STRINGS: None,
    Scalar.STRSLICE: None,
    Scalar.SKIP: None,
}

# The schema: moby's api/types, the fields read and the data maps (20.10 and 26).
_DRIVER = Struct({"Name": Scalar.STRING, "Options": MapOf(Scalar.STRING)}, pointer=True)
_VOLUME_OPTIONS = Struct({"DriverConfig": _DRIVER, "Labels": MapOf(Scalar.SKIP)}, pointer=True)
_MOUNT = Struct({"Type": Scalar.STRING, "Source": Scalar.STRING, "VolumeOptions": _VOLUME_OPTIONS})
_HOST_FIELDS: dict[str, Kind] = {
    "Binds": Scalar.STRINGS,
    "Mounts": ListOf(_MOUNT),
    "VolumesFrom": Scalar.STRINGS,
    "Privileged": Scalar.BOOL,
    "NetworkMode": Scalar.STRING,
    "PidMode": Scalar.STRING,
    "IpcMode": Scalar.STRING,
    "UTSMode": Scalar.STRING,
    "UsernsMode": Scalar.STRING,
    "CgroupnsMode": Scalar.STRING,
    "CapAdd": Scalar.STRSLICE,
    "SecurityOpt": Scalar.STRINGS,
    "MaskedPaths": Scalar.STRINGS,
    "ReadonlyPaths": Scalar.STRINGS,
    "Devices": ListOf(Struct({"PathOnHost": Scalar.STRING})),
    "DeviceRequests": ListOf(Struct({"Driver": Scalar.STRING, "Options": MapOf(Scalar.SKIP)})),
    "DeviceCgroupRules": Scalar.STRINGS,
    "Runtime": Scalar.STRING,
    "CgroupParent": Scalar.STRING,
    "Sysctls": MapOf(Scalar.STRING),
    "GroupAdd": Scalar.STRINGS,
    "PortBindings": MapOf(Scalar.SKIP),
    "Tmpfs": MapOf(Scalar.SKIP),
    "StorageOpt": MapOf(Scalar.SKIP),
    "LogConfig": Struct({"Config": MapOf(Scalar.SKIP)}),
    "Annotations": MapOf(Scalar.SKIP),
}
_CONFIG_FIELDS: dict[str, Kind] = {
    "Image": Scalar.STRING,
    "Labels": MapOf(Scalar.SKIP),
    "Volumes": MapOf(Scalar.SKIP),
    "ExposedPorts": MapOf(Scalar.SKIP),
}
_NETWORKING = Struct(
    {"EndpointsConfig": MapOf(Struct({"DriverOpts": MapOf(Scalar.SKIP)}, pointer=True))},
    pointer=True,
)
CREATE = Struct(
    {
        **_CONFIG_FIELDS,
        **_HOST_FIELDS,
        "HostConfig": Struct(_HOST_FIELDS, pointer=True),
        "NetworkingConfig": _NETWORKING,
    }
)
"""runconfig's ``ContainerConfigWrapper``: ``Config`` and the deprecated
``HostConfig`` embedded (their fields at the top), the inner ``HostConfig``."""
EXEC = Struct({"User": Scalar.STRING, "Privileged": Scalar.BOOL})
VOLUME = Struct(
    {"Driver": Scalar.STRING, "DriverOpts": MapOf(Scalar.STRING), "Labels": MapOf(Scalar.SKIP)}
)


def _siblings(members: gojson.Members, where: str) -> None:
    keys = [key for key, _ in members]
    if len({key.casefold() for key in keys}) == len(keys) and _TRICKY.isdisjoint("".join(keys)):
        return
    seen: set[str] = set()
    for key in keys:
        if not _TRICKY.isdisjoint(key):
            raise Refused(f"key {key!r} in {where} holds a letter decoders fold differently")
        folded = key.casefold()
        if folded in seen:
            raise Refused(f"{where} holds two keys that are one to dockerd: {key!r}")
        seen.add(folded)


def _scan(value: Any, where: str) -> None:
    """The sibling rules in every object inside ``value``, however deep."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, gojson.Members):
            _siblings(item, f"an object inside {where}")
            stack.extend(inner for _, inner in item if isinstance(inner, list))
        elif isinstance(item, list):
            stack.extend(inner for inner in item if isinstance(inner, list))


def _strings(value: Any, where: str, what: str) -> list[str]:
    if not isinstance(value, list) or isinstance(value, gojson.Members):
        raise Refused(f"{where}: expected {what}")
    out: list[str] = []
    for item in value:
        if item is None:
            out.append("")  # a fresh element: null leaves it ""
        elif isinstance(item, str):
            out.append(item)
        else:
            raise Refused(f"{where}: expected {what}")
    return out


def _bind(value: Any, kind: Kind, where: str) -> Any:
    """``value`` as Go binds it to a fresh field of ``kind``."""
    if isinstance(kind, Scalar):
        if kind is Scalar.SKIP:
            _scan(value, where)
            return None
        if value is None:
            return _ZERO[kind]
        if kind is Scalar.BOOL and isinstance(value, bool):
            return value
        if kind is Scalar.STRING and isinstance(value, str):
            return value
        if kind is Scalar.STRSLICE and isinstance(value, str):
            return [value]
        if kind in (Scalar.STRINGS, Scalar.STRSLICE):
            return _strings(value, where, kind.value)
        raise Refused(f"{where}: expected {kind.value}")
    if value is None:
        return {} if isinstance(kind, Struct) and not kind.pointer else None
    if isinstance(kind, ListOf):
        if not isinstance(value, list) or isinstance(value, gojson.Members):
            raise Refused(f"{where}: expected an array")
        return [_bind(item, kind.item, f"{where}[{n}]") for n, item in enumerate(value)]
    if not isinstance(value, gojson.Members):
        raise Refused(f"{where}: expected an object")
    if isinstance(kind, MapOf):
        return {key: _bind(item, kind.value, f"{where}[{key!r}]") for key, item in value}
    _siblings(value, where or "the body")
    bound: dict[str, Any] = {}
    for key, item in value:
        name = kind.by_key.get(key.lower())
        if name is not None:
            bound[name] = _bind(item, kind.fields[name], f"{where}.{name}" if where else name)
        elif isinstance(item, list):  # Members too; a scalar holds no keys
            _scan(item, key)
    return bound


def bind(body: bytes, kind: Struct) -> dict[str, Any]:
    """The fields of ``kind`` in ``body``, bound as Go binds them.

    Raises Refused, or ``gojson.TooDeep`` (also a ValueError) for a body nested
    deeper than Go reads, which the heal path answers where it refuses nothing else.
    """
    bound: dict[str, Any] = _bind(_object(body), kind, "")
    return bound


def _object(body: bytes) -> gojson.Members:
    """The body's top-level JSON object; raises Refused, or ``gojson.TooDeep``."""
    try:
        value = gojson.loads(body)
    except gojson.TooDeep:
        raise
    except ValueError as exc:
        raise Refused(f"invalid JSON: {exc}") from None
    if not isinstance(value, gojson.Members):
        raise Refused("invalid JSON: expected an object")
    return value


@dataclass(frozen=True)
class MountSpec:
    """One of ``HostConfig.Mounts``, as far as host reach goes."""

    type: str
    source: str
    driver: str | None
    """The volume driver's name when ``VolumeOptions.DriverConfig`` is given."""
    options: tuple[tuple[str, str], ...]
    """``DriverConfig.Options`` (sorted; a Go map has no order)."""


@dataclass(frozen=True)
class Create:
    """The fields of a container create that the body checks judge, as dockerd reads them."""

    image: str = ""
    privileged: bool = False
    binds: tuple[str, ...] = ()
    mounts: tuple[MountSpec, ...] = ()
    volumes_from: tuple[str, ...] = ()
    network_mode: str = ""
    pid_mode: str = ""
    ipc_mode: str = ""
    uts_mode: str = ""
    userns_mode: str = ""
    cgroupns_mode: str = ""
    cap_add: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    masked_paths: tuple[str, ...] | None = None
    """None when absent or null (the daemon's defaults); ``()`` unmasks all."""
    readonly_paths: tuple[str, ...] | None = None
    devices: tuple[str, ...] = ()
    """Each device's ``PathOnHost``."""
    device_requests: tuple[str, ...] = ()
    """Each device request's ``Driver``."""
    device_cgroup_rules: tuple[str, ...] = ()
    runtime: str = ""
    cgroup_parent: str = ""
    sysctls: tuple[tuple[str, str], ...] = ()
    group_add: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    """The networks ``NetworkingConfig.EndpointsConfig`` names (sorted)."""


def _tuple(value: list[str] | None) -> tuple[str, ...]:
    return tuple(value or ())


def _mount(fields: Mapping[str, Any]) -> MountSpec:
    options = fields.get("VolumeOptions") or {}
    driver = options.get("DriverConfig")
    return MountSpec(
        fields.get("Type", ""),
        fields.get("Source", ""),
        None if driver is None else driver.get("Name", ""),
        tuple(sorted(((driver or {}).get("Options") or {}).items())),
    )


def create_from(top: Mapping[str, Any]) -> Create:
    """The ``Create`` record of a body bound to ``CREATE`` (or decoded as Go does)."""
    inner = top.get("HostConfig")
    host: Mapping[str, Any] = inner if inner is not None else top
    nets = (top.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    masked = host.get("MaskedPaths")
    readonly = host.get("ReadonlyPaths")
    return Create(
        image=top.get("Image", ""),
        privileged=host.get("Privileged", False),
        binds=_tuple(host.get("Binds")),
        mounts=tuple(_mount(m) for m in host.get("Mounts") or ()),
        volumes_from=_tuple(host.get("VolumesFrom")),
        network_mode=host.get("NetworkMode", ""),
        pid_mode=host.get("PidMode", ""),
        ipc_mode=host.get("IpcMode", ""),
        uts_mode=host.get("UTSMode", ""),
        userns_mode=host.get("UsernsMode", ""),
        cgroupns_mode=host.get("CgroupnsMode", ""),
        cap_add=_tuple(host.get("CapAdd")),
        security_opt=_tuple(host.get("SecurityOpt")),
        masked_paths=None if masked is None else tuple(masked),
        readonly_paths=None if readonly is None else tuple(readonly),
        devices=tuple(d.get("PathOnHost", "") for d in host.get("Devices") or ()),
        device_requests=tuple(r.get("Driver", "") for r in host.get("DeviceRequests") or ()),
        device_cgroup_rules=_tuple(host.get("DeviceCgroupRules")),
        runtime=host.get("Runtime", ""),
        cgroup_parent=host.get("CgroupParent", ""),
        sysctls=tuple(sorted((host.get("Sysctls") or {}).items())),
        group_add=_tuple(host.get("GroupAdd")),
        networks=tuple(sorted(nets)),
    )


def read_create(body: bytes) -> Create:
    """A ``POST /containers/create`` body as dockerd reads it (raises as ``bind``)."""
    return create_from(bind(body, CREATE))


def create_image(body: bytes) -> str:
    """The image a create names, as dockerd reads it, and nothing else of the body.

    The heal path's question on a listener that judges no body: it must heal
    every create dockerd would run from a missing image, so it does not
    refuse what ``bind`` refuses to let a policy through (two keys folding
    together, tricky letters, fields it does not read). Go binds ``Image``
    from each key that folds to it (only ASCII case can, for this name), in
    order, a ``null`` keeping the value before. Raises Refused for a body that
    is not a JSON object or whose image is not a string (dockerd answers 400),
    and ``gojson.TooDeep`` as ``bind`` does.
    """
    image = ""
    for key, item in _object(body):
        if key.isascii() and key.lower() == "image" and item is not None:
            if not isinstance(item, str):
                raise Refused("Image: expected a string")
            image = item
    return image


@dataclass(frozen=True)
class Exec:
    user: str = ""
    privileged: bool = False


def read_exec(body: bytes) -> Exec:
    """A ``POST /containers/{id}/exec`` body as dockerd reads it (raises as ``bind``)."""
    fields = bind(body, EXEC)
    return Exec(fields.get("User", ""), fields.get("Privileged", False))


@dataclass(frozen=True)
class Volume:
    driver: str = ""
    options: tuple[tuple[str, str], ...] = ()


def read_volume(body: bytes) -> Volume:
    """A ``POST /volumes/create`` body as dockerd reads it (raises as ``bind``)."""
    fields = bind(body, VOLUME)
    return Volume(fields.get("Driver", ""), tuple(sorted((fields.get("DriverOpts") or {}).items())))

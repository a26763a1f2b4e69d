"""A small oracle of Go's ``encoding/json``, written from its rules, for the Engine API's types.

No Go toolchain is on the machine, so this is ``decode.go`` retold in Python
for the few kinds the create, exec and volume bodies need, everything the
proxy's reader (``gobind``) refuses to meet included: duplicate keys, folded
keys, merges, ``null`` into each kind, slices whose elements are decoded in
place. ``tests/e2e/test_gobind_daemon.py`` holds it to the real daemon's
inspect on a sample.

The rules, from ``encoding/json/decode.go`` (Go 1.18 to 1.22 alike here):
- A key names the struct field whose name equals it, else the first whose
  name it equals under simple folding (``bytes.EqualFold``; for an ASCII name
  only ASCII case, U+017F for ``s`` and U+212A for ``k`` fold: U+0130 and
  U+0131 are orbits of their own). Fields of embedded structs are promoted;
  a key for one allocates a nil embedded pointer, whatever its value.
- An object decodes into the value already there: a struct keeps the fields
  it does not name, a non-nil pointer is followed, a non-nil map keeps its
  keys. A map element is decoded fresh (zeroed) and then stored.
- An array decodes element by element into the slice already there, growing
  it (capacity ``c + c/2``, at least 4; Go 1.21's ``reflect.Grow`` rounds
  differently, which only matters to bodies ``gobind`` refuses) and
  truncating it at the end; an element beyond the length but within the
  capacity keeps what an earlier array left in it. An empty array is an
  empty, non-nil slice.
- ``null`` makes a pointer, slice, map or interface nil and leaves anything
  else as it was. ``strslice.StrSlice`` (``CapAdd``) has its own decoder:
  a string is a one-element list, ``null`` nil, an array a fresh list.
- A value of the wrong type is an error that decoding goes on past; dockerd
  answers 400 for any, so the oracle reports it and the reading is moot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.wire import gojson
from proxy.wire.gobind import Create, create_from


@dataclass(frozen=True)
class GoType:
    kind: str
    """struct, ptr, slice, map, string, bool, strslice, or other (not modelled: any value)."""
    elem: GoType | None = None
    fields: tuple[GoField, ...] = ()


@dataclass(frozen=True)
class GoField:
    name: str
    type: GoType
    embedded: bool = False


STRING = GoType("string")
BOOL = GoType("bool")
OTHER = GoType("other")
STRSLICE = GoType("strslice")


def struct(*fields: GoField) -> GoType:
    return GoType("struct", fields=fields)


def ptr(t: GoType) -> GoType:
    return GoType("ptr", elem=t)


def slice_of(t: GoType) -> GoType:
    return GoType("slice", elem=t)


def map_of(t: GoType) -> GoType:
    return GoType("map", elem=t)


def f(name: str, t: GoType) -> GoField:
    return GoField(name, t)


STRINGS = slice_of(STRING)
DRIVER = struct(f("Name", STRING), f("Options", map_of(STRING)))
MOUNT = struct(
    f("Type", STRING),
    f("Source", STRING),
    f("Target", STRING),
    f("ReadOnly", BOOL),
    f(
        "VolumeOptions",
        ptr(struct(f("NoCopy", BOOL), f("Labels", map_of(STRING)), f("DriverConfig", ptr(DRIVER)))),
    ),
)
RESOURCES = struct(
    f("CgroupParent", STRING),
    f("Devices", slice_of(struct(f("PathOnHost", STRING), f("PathInContainer", STRING)))),
    f("DeviceCgroupRules", STRINGS),
    f("DeviceRequests", slice_of(struct(f("Driver", STRING), f("Options", map_of(STRING))))),
    f("Memory", OTHER),
)
HOST_CONFIG = struct(
    f("Binds", STRINGS),
    f("LogConfig", struct(f("Type", STRING), f("Config", map_of(STRING)))),
    f("NetworkMode", STRING),
    f("PortBindings", map_of(OTHER)),
    f("VolumeDriver", STRING),
    f("VolumesFrom", STRINGS),
    f("Annotations", map_of(STRING)),
    f("CapAdd", STRSLICE),
    f("CapDrop", STRSLICE),
    f("CgroupnsMode", STRING),
    f("GroupAdd", STRINGS),
    f("IpcMode", STRING),
    f("PidMode", STRING),
    f("Privileged", BOOL),
    f("SecurityOpt", STRINGS),
    f("StorageOpt", map_of(STRING)),
    f("Tmpfs", map_of(STRING)),
    f("UTSMode", STRING),
    f("UsernsMode", STRING),
    f("Sysctls", map_of(STRING)),
    f("Runtime", STRING),
    GoField("Resources", RESOURCES, embedded=True),
    f("Mounts", slice_of(MOUNT)),
    f("MaskedPaths", STRINGS),
    f("ReadonlyPaths", STRINGS),
)
CONFIG = struct(
    f("User", STRING),
    f("Env", STRINGS),
    f("Image", STRING),
    f("Volumes", map_of(OTHER)),
    f("Labels", map_of(STRING)),
    f("ExposedPorts", map_of(OTHER)),
)
ENDPOINT = struct(f("Aliases", STRINGS), f("DriverOpts", map_of(STRING)))
WRAPPER = struct(
    GoField("Config", ptr(CONFIG), embedded=True),
    f("HostConfig", ptr(HOST_CONFIG)),
    f("Cpuset", STRING),
    f("NetworkingConfig", ptr(struct(f("EndpointsConfig", map_of(ptr(ENDPOINT)))))),
    GoField("HostConfig", ptr(HOST_CONFIG), embedded=True),
)
"""runconfig's ``ContainerConfigWrapper`` (``config_unix.go``), 20.10 and 26 alike."""
EXEC_CONFIG = struct(f("User", STRING), f("Privileged", BOOL), f("Env", STRINGS))
VOLUME_CREATE = struct(
    f("Name", STRING), f("Driver", STRING), f("DriverOpts", map_of(STRING)), f("Labels", OTHER)
)


@dataclass
class Slice:
    backing: list[Any]
    length: int

    @property
    def items(self) -> list[Any]:
        return self.backing[: self.length]


_FOLD = {"\u017f": "s", "\u212a": "k"}


def go_fold(text: str) -> str:
    """Equal for two texts ``bytes.EqualFold`` takes as equal, when one is ASCII."""
    return "".join(_FOLD.get(c, c.lower() if c.isascii() else c) for c in text)


def promoted(t: GoType) -> list[tuple[str, tuple[str, ...]]]:
    """(JSON name, path of Go field names) per field, embedded ones promoted, by depth."""
    found: dict[str, tuple[int, tuple[str, ...]]] = {}
    level: list[tuple[GoType, tuple[str, ...]]] = [(t, ())]
    depth = 0
    while level:
        nxt: list[tuple[GoType, tuple[str, ...]]] = []
        for owner, path in level:
            for fld in owner.fields:
                here = (*path, fld.name + ("*" if fld.embedded else ""))
                if fld.embedded:
                    inner = fld.type.elem if fld.type.kind == "ptr" else fld.type
                    assert inner is not None
                    nxt.append((inner, here))
                elif fld.name not in found:
                    found[fld.name] = (depth, here)
        level = nxt
        depth += 1
    return [(name, path) for name, (_, path) in found.items()]


@dataclass
class Oracle:
    error: bool = False
    notes: list[str] = field(default_factory=list)

    def zero(self, t: GoType) -> Any:
        if t.kind == "struct":
            return {}
        if t.kind == "string":
            return ""
        if t.kind == "bool":
            return False
        return None

    def decode(self, cur: Any, t: GoType, value: Any) -> Any:
        """The Go value ``cur`` of type ``t`` after ``value`` is decoded into it."""
        if t.kind == "other":
            return cur
        if t.kind == "strslice":
            return self._strslice(cur, value)
        if value is None:
            return None if t.kind in ("ptr", "slice", "map") else cur
        if t.kind == "ptr":
            assert t.elem is not None
            return self.decode(self.zero(t.elem) if cur is None else cur, t.elem, value)
        if isinstance(value, gojson.Members):
            if t.kind == "map":
                assert t.elem is not None
                out = {} if cur is None else cur
                for key, item in value:
                    out[key] = self.decode(self.zero(t.elem), t.elem, item)
                return out
            if t.kind == "struct":
                return self._struct(dict(cur), t, value)
            return self._wrong(cur, t, value)
        if isinstance(value, list):
            if t.kind != "slice":
                return self._wrong(cur, t, value)
            assert t.elem is not None
            return self._array(cur, t.elem, value)
        if t.kind == "string" and isinstance(value, str):
            return value
        if t.kind == "bool" and isinstance(value, bool):
            return value
        return self._wrong(cur, t, value)

    def _wrong(self, cur: Any, t: GoType, value: Any) -> Any:
        self.error = True
        self.notes.append(f"cannot decode {value!r} into {t.kind}")
        return cur

    def _strslice(self, cur: Any, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        strings = isinstance(value, list) and not isinstance(value, gojson.Members)
        if strings and all(item is None or isinstance(item, str) for item in value):
            return ["" if item is None else item for item in value]
        return self._wrong(cur, STRSLICE, value)

    def _array(self, cur: Slice | None, elem: GoType, items: list[Any]) -> Slice:
        s = cur if cur is not None else Slice([], 0)
        i = 0
        for item in items:
            if i >= len(s.backing):
                cap = len(s.backing) + len(s.backing) // 2
                cap = max(cap, 4)
                fresh = [self.zero(elem) for _ in range(cap - s.length)]
                s = Slice(s.backing[: s.length] + fresh, s.length)
            if i >= s.length:
                s.length = i + 1
            s.backing[i] = self.decode(s.backing[i], elem, item)
            i += 1
        if i < s.length:
            s.length = i
        if i == 0:
            s = Slice([], 0)
        return s

    def _struct(self, out: dict[str, Any], t: GoType, members: gojson.Members) -> dict[str, Any]:
        names = promoted(t)
        for key, item in members:
            path = next((p for n, p in names if n == key), None)
            if path is None:
                path = next((p for n, p in names if go_fold(n) == go_fold(key)), None)
            if path is None:
                continue
            out = self._set(out, t, path, item)
        return out

    def _set(self, out: dict[str, Any], t: GoType, path: tuple[str, ...], item: Any) -> Any:
        """``out`` (a struct of type ``t``) with the field at ``path`` decoded from ``item``."""
        head, rest = path[0], path[1:]
        fld = next(x for x in t.fields if x.name + ("*" if x.embedded else "") == head)
        if not rest:
            out[head] = self.decode(out.get(head, self.zero(fld.type)), fld.type, item)
            return out
        inner_t = fld.type.elem if fld.type.kind == "ptr" else fld.type
        assert inner_t is not None
        inner = out.get(head)
        inner = dict(inner) if inner is not None else {}  # an embedded pointer is allocated
        out[head] = self._set(inner, inner_t, rest, item)
        return out


def decode(body: bytes, t: GoType) -> tuple[dict[str, Any] | None, bool]:
    """The struct Go decodes ``body`` into, and whether dockerd would answer 400."""
    oracle = Oracle()
    value = gojson.loads(body)
    if not isinstance(value, gojson.Members):
        return None, True
    out = oracle.decode({}, t, value)
    return out, oracle.error


def plain(value: Any) -> Any:
    """A decoded Go value in ``gobind``'s shape: embedded structs' fields in their
    owner (an inner field of the same name stays the owner's), slices as lists."""
    if isinstance(value, Slice):
        return [plain(item) for item in value.items]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key.endswith("*"):
            for inner, inner_value in (plain(item) or {}).items():
                out.setdefault(inner, inner_value)
        else:
            out[key] = plain(item)
    return out


def create_of(w: dict[str, Any]) -> Create:
    """What dockerd makes of a decoded ``ContainerConfigWrapper``: ``gobind``'s record
    of it (``create_from`` is ``getHostConfig``, held to the daemon by the e2e test)."""
    return create_from(plain(w))

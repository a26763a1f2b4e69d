"""What a policy lets a create, an exec or a volume create do: ``[policies.NAME.create]``.

A route policy that allows ``POST /containers/create`` allows everything a
create can ask for, and ``--privileged``, ``-v /:/host``, ``--pid host``, a
device or an unconfined seccomp profile is each root on the host. These
checks judge the body, read as dockerd reads it (``gobind``).

Rules:
- Refused unless the policy's create table allows them:
  - ``Privileged`` (``privileged = true``), on a create and on an exec;
  - a host path mounted into the container: ``Binds`` with an absolute
    source, ``Mounts`` of type ``bind``, and a local volume whose options
    name an absolute ``device`` or a ``bind`` (``type=none,o=bind``): in a
    create's ``Mounts`` and in a ``POST /volumes/create`` body. Each source
    must be a folder directly in a ``binds_under`` folder (not the folder
    itself, nor deeper, nor one holding another ``binds_under`` folder): a
    container writes in the folder it mounts, and dockerd follows symlinks
    again at start, so what lies below a mounted folder can be swapped for
    a symlink out between a create and its start (it was, on both
    daemons). A bind source is cleaned as Go's ``path.Clean`` cleans it
    (dockerd does), a volume's ``device`` is not (mount(2) gets it as
    written, and takes ``..`` after the symlink before it), and then each is
    resolved by the injected ``Resolver`` as the daemon will reach it, so a
    symlink inside a folder cannot lead out. No folders, no bind mounts;
  - a local volume with mount options of a ``type`` other than those of
    ``VOLUME_TYPES`` (and not a bind): dockerd mounts it in its own
    namespaces, so ``proc``, ``sysfs`` or ``cgroup2`` is the host's own, and
    an ``overlay``'s ``lowerdir`` is a host folder (each showed the host's in
    a container on both daemons);
  - ``VolumesFrom``, always (the other container's mounts are not judged here);
  - ``NetworkMode`` (and a network of ``EndpointsConfig``) ``host`` or
    ``container:...`` unless ``network_modes`` lists ``host`` or ``container``;
    ``PidMode``, ``IpcMode`` ``host`` or ``container:...``, ``UTSMode``,
    ``UsernsMode``, ``CgroupnsMode`` ``host``, unless ``namespaces`` lists
    ``pid=host``, ``pid=container``, ``ipc=host``, ...;
  - a capability in ``CapAdd`` that ``cap_add`` does not list (compared as
    dockerd does: any case, ``CAP_`` or not; ``ALL`` only if listed);
  - a ``SecurityOpt`` entry other than ``no-new-privileges`` that
    ``security_opt`` does not list word for word: an allowlist, because
    ``seccomp=<profile JSON>`` and ``label=type:spc_t`` unconfine as surely
    as ``seccomp=unconfined``, and dockerd also takes ``:`` for ``=``;
  - ``MaskedPaths`` or ``ReadonlyPaths`` present at all (``[]`` took away
    the read-only ``/proc/sys`` on both daemons); ``null``, which the CLI
    sends, is absent;
  - ``Devices`` (by ``PathOnHost``), ``DeviceRequests`` (by driver),
    ``DeviceCgroupRules``, a ``Runtime`` or ``CgroupParent`` other than
    the default, ``Sysctls`` (by name), ``GroupAdd``: each unless listed;
  - with ``images`` set, an image none of its patterns names. An image id,
    a short id (``2b972d``: dockerd 26 takes a prefix) or a reference with
    a digest (a digest can name any local image by id) only when listed
    word for word;
  - with ``exec_user_root = false``, an exec whose ``User`` is ``0`` (as
    Go reads a number: ``+0``, ``-0`` and ``00`` too) or ``root`` (an
    empty ``User`` runs as the container's, which its create set; another
    name the image's ``/etc/passwd`` gives uid 0 is not known here).
- The first refusal is the answer; it names the field and the value, never
  an ``Env`` value, and reads ``policy "NAME" refuses ...``.
- A named volume that already exists is not looked into: making one with a
  bind is judged when it is made (``POST /volumes/create``).
- A symlink can be swapped between the check and the container's start, so
  ``check`` warns of a ``binds_under`` folder anyone but root can write in
  (``unsafe_folders``), or whose way down someone else could redirect.
- Pure: the paths and image names the body only names are resolved by the
  caller's ``Resolver`` (paths with ``hostpath.resolve``, in the daemon's root).

Theory of operation: ``create_rules`` reads a ``[policies.NAME.create]``
table over the rules of the policy it extends; ``judge`` reads a body for
one of the routes of ``LIMITS`` with ``gobind`` and runs that route's
checks in a fixed order, each a small function returning a ``Refusal`` or
None.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

from . import gobind

CREATE = "POST /containers/create"
EXEC = "POST /containers/{id}/exec"
VOLUME = "POST /volumes/create"
LIMITS = {CREATE: 1 << 20, EXEC: 64 << 10, VOLUME: 64 << 10}
"""The routes whose bodies are judged, and the most of a body each reads (413 past it)."""

_NAMESPACES = frozenset(
    {"pid=host", "pid=container", "ipc=host", "ipc=container", "uts=host"}
    | {"userns=host", "cgroupns=host"}
)
_NO_NEW_PRIVILEGES = frozenset(
    {"no-new-privileges", "no-new-privileges=true", "no-new-privileges:true"}
)
VOLUME_TYPES = ("tmpfs", "nfs", "nfs4", "cifs")
"""The types a local volume may mount without a bind: memory, or a network share."""
_HEX = re.compile(r"(?:sha256:)?[0-9a-f]{1,64}")
_STAR = "zqstarzq"
"""Stands for ``*`` while a pattern is normalised: valid in every part of a reference."""
_SHOWN = 60
"""A refused value is cut to this many characters (a seccomp profile is JSON)."""


class Resolver(Protocol):
    """What the body only names, resolved outside the checks (I/O, or another layer)."""

    def path(self, path: str) -> str | None:
        """``path`` (absolute; ``..`` taken after symlinks, as the kernel takes it) as
        the daemon will reach it, symlinks resolved; None when the daemon's view
        cannot be had (a bind is then refused)."""

    def image(self, reference: str) -> str | None:
        """``reference`` spelled in full (``docker.io/library/app:latest``), None if no name."""


@dataclass(frozen=True, slots=True)
class CreateRules:
    """A policy's ``[policies.NAME.create]`` table; the defaults refuse all host reach."""

    privileged: bool = False
    binds_under: tuple[str, ...] = ()
    network_modes: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    device_requests: tuple[str, ...] = ()
    device_cgroup_rules: tuple[str, ...] = ()
    runtimes: tuple[str, ...] = ()
    cgroup_parents: tuple[str, ...] = ()
    sysctls: tuple[str, ...] = ()
    group_add: tuple[str, ...] = ()
    images: tuple[str, ...] | None = None
    """None: any image."""
    exec_user_root: bool = True


@dataclass(frozen=True, slots=True)
class Refusal:
    field: str
    """Where in the body, e.g. ``HostConfig.Privileged``."""
    value: str
    """The refused value, cut short; for the audit log."""
    reason: str
    """What the client reads: ``policy "runner" refuses privileged containers``."""


def _cut(value: str) -> str:
    return value if len(value) <= _SHOWN else value[:_SHOWN] + "..."


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{where}: must be a list of strings")
    return tuple(value)


def _capability(name: str) -> str:
    upper = name.upper()
    return upper.removeprefix("CAP_") if upper != "CAP_ALL" else upper


def _clean(path: str) -> str:
    """An absolute path as Go's ``path.Clean`` leaves it (one leading ``/``)."""
    return posixpath.normpath("/" + path.lstrip("/"))


def _absolute(path: str) -> str:
    """A local volume's ``device`` as mount(2) takes it, from dockerd's working
    directory (``/``), its ``..`` left for the kernel to take after symlinks."""
    return path if path.startswith("/") else "/" + path


def _check_binds_under(value: tuple[str, ...], where: str) -> tuple[str, ...]:
    for folder in value:
        if not folder.startswith("/"):
            raise ValueError(f"{where}: {folder!r} is not an absolute path")
    return tuple(_clean(folder) for folder in value)


def _check_in(allowed: frozenset[str]) -> Callable[[tuple[str, ...], str], tuple[str, ...]]:
    def check(value: tuple[str, ...], where: str) -> tuple[str, ...]:
        for entry in value:
            if entry not in allowed:
                raise ValueError(f"{where}: {entry!r} is not one of {', '.join(sorted(allowed))}")
        return value

    return check


def _check_caps(value: tuple[str, ...], where: str) -> tuple[str, ...]:
    for entry in value:
        if not re.fullmatch(r"[A-Za-z_0-9]+", entry):
            raise ValueError(f"{where}: {entry!r} is not a capability")
    return tuple(_capability(entry) for entry in value)


_CHECKS: dict[str, Callable[[tuple[str, ...], str], tuple[str, ...]]] = {
    "binds_under": _check_binds_under,
    "network_modes": _check_in(frozenset({"host", "container"})),
    "namespaces": _check_in(_NAMESPACES),
    "cap_add": _check_caps,
}
_BOOLS = frozenset({"privileged", "exec_user_root"})
_KEYS = frozenset(f.name for f in fields(CreateRules))


def create_rules(table: Any, where: str, base: CreateRules | None = None) -> CreateRules:
    """The rules of a ``[policies.NAME.create]`` table (``where`` names it in errors),
    each key not set taken from ``base``, the rules of the policy it extends.

    Raises ValueError naming the key at fault, in one line.
    """
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: must be a table")
    changes: dict[str, Any] = {}
    for key, value in table.items():
        at = f"{where}.{key}"
        if key not in _KEYS:
            raise ValueError(f"{at}: unknown key (known: {', '.join(sorted(_KEYS))})")
        if key in _BOOLS:
            if not isinstance(value, bool):
                raise ValueError(f"{at}: must be true or false")
            changes[key] = value
            continue
        entries = _strings(value, at)
        check = _CHECKS.get(key)
        changes[key] = check(entries, at) if check else entries
    return replace(base or CreateRules(), **changes)


def judge(
    policy: str, rules: CreateRules, route: str, body: bytes, resolver: Resolver
) -> Refusal | None:
    """The refusal of a ``route`` of ``LIMITS`` with this (dechunked) body, or None.

    Raises ``gobind.Refused`` (or ``gojson.TooDeep``), both ValueError, for a
    body not read: the caller answers 400 with its text.
    """
    if route == CREATE:
        return judge_create(policy, rules, gobind.read_create(body), resolver)
    if route == EXEC:
        return judge_exec(policy, rules, gobind.read_exec(body))
    return judge_volume(policy, rules, gobind.read_volume(body), resolver)


def _refuse(policy: str, field: str, value: str, what: str) -> Refusal:
    return Refusal(field, _cut(value), f'policy "{policy}" refuses {what}')


def _host_path(
    policy: str, rules: CreateRules, clean: str, field: str, resolver: Resolver
) -> Refusal | None:
    """The refusal of a host path mounted as ``clean`` (absolute; as dockerd hands it
    to the kernel, cleaned or not), if it does not lead where ``binds_under`` allows."""
    real = resolver.path(clean)
    if real is None:
        what = f"bind mount {clean} (where it leads in dockerd's root cannot be seen)"
        return _refuse(policy, field, clean, what)
    shown = clean if real == clean else f"{clean} (which resolves to {real})"
    inside = [f for f in rules.binds_under if real.startswith(f.rstrip("/") + "/") or real == f]
    if not inside:
        allowed = ", ".join(rules.binds_under) or "none"
        return _refuse(policy, field, clean, f"bind mount {shown} (allowed: {allowed})")
    swappable = real in rules.binds_under or posixpath.dirname(real) not in inside
    if swappable or any(f.startswith(real + "/") for f in rules.binds_under):
        what = (
            f"bind mount {shown} (only folders directly in {', '.join(inside)}: a container "
            "can write in the folder it mounts, and dockerd follows symlinks at start)"
        )
        return _refuse(policy, field, clean, what)
    return None


def _local_volume(
    policy: str,
    rules: CreateRules,
    driver: str | None,
    options: Iterable[tuple[str, str]],
    field: str,
    resolver: Resolver,
) -> Refusal | None:
    """The refusal of a local volume's mount options, if they reach the host."""
    if driver not in (None, "", "local"):
        return None  # a plugin's options mean what the plugin says
    opts = dict(options)
    if not opts.keys() & {"type", "device", "o"}:
        return None  # a folder of dockerd's own
    device = opts.get("device", "")
    if any(o.strip() in ("bind", "rbind") for o in opts.get("o", "").split(",")):
        # MS_BIND: the kernel binds the device whatever the type says
        return _host_path(policy, rules, _absolute(device), f"{field}.device", resolver)
    if device.startswith("/"):
        refusal = _host_path(policy, rules, device, f"{field}.device", resolver)
        if refusal:
            return refusal
    kind = opts.get("type", "")
    if kind not in VOLUME_TYPES:  # an overlay's lowerdir is in o, not in device
        what = f"local volume of type {kind!r} (allowed: {', '.join(VOLUME_TYPES)})"
        return _refuse(policy, f"{field}.type", kind, what)
    return None


def _mounts(
    policy: str, rules: CreateRules, create: gobind.Create, resolver: Resolver
) -> Refusal | None:
    for n, bind in enumerate(create.binds):
        parts = bind.split(":", 3)
        if len(parts) > 1 and parts[0].startswith("/"):
            source = _clean(parts[0])
            refusal = _host_path(policy, rules, source, f"HostConfig.Binds[{n}]", resolver)
            if refusal:
                return refusal
    for n, mount in enumerate(create.mounts):
        field = f"HostConfig.Mounts[{n}]"
        if mount.type == "bind":
            refusal = _host_path(policy, rules, _clean(mount.source), field, resolver)
        else:
            options = f"{field}.VolumeOptions.DriverConfig.Options"
            refusal = _local_volume(policy, rules, mount.driver, mount.options, options, resolver)
        if refusal:
            return refusal
    if create.volumes_from:
        value = create.volumes_from[0]
        return _refuse(policy, "HostConfig.VolumesFrom", value, f"VolumesFrom {value}")
    return None


def _shared(mode: str) -> str | None:
    """``host`` or ``container`` when a namespace mode shares one not the container's own."""
    lower = mode.lower()
    if lower == "host":
        return "host"
    if lower.startswith("container:"):
        return "container"
    return None


def _namespaces(policy: str, rules: CreateRules, create: gobind.Create) -> Refusal | None:
    networks = [("HostConfig.NetworkMode", create.network_mode)]
    networks += [("NetworkingConfig.EndpointsConfig", name) for name in create.networks]
    for field, mode in networks:
        kind = _shared(mode)
        if kind and kind not in rules.network_modes:
            allowed = ", ".join(rules.network_modes) or "none"
            return _refuse(policy, field, mode, f"network mode {mode} (allowed: {allowed})")
    for field, name, mode in (
        ("HostConfig.PidMode", "pid", create.pid_mode),
        ("HostConfig.IpcMode", "ipc", create.ipc_mode),
        ("HostConfig.UTSMode", "uts", create.uts_mode),
        ("HostConfig.UsernsMode", "userns", create.userns_mode),
        ("HostConfig.CgroupnsMode", "cgroupns", create.cgroupns_mode),
    ):
        kind = _shared(mode)
        if kind and f"{name}={kind}" not in rules.namespaces:
            return _refuse(policy, field, mode, f"{name} namespace {mode}")
    return None


def _security(policy: str, rules: CreateRules, create: gobind.Create) -> Refusal | None:
    allowed = set(rules.cap_add)
    for cap in create.cap_add:
        if _capability(cap) not in allowed:
            return _refuse(policy, "HostConfig.CapAdd", cap, f"capability {cap}")
    for option in create.security_opt:
        if option not in _NO_NEW_PRIVILEGES and option not in rules.security_opt:
            return _refuse(
                policy, "HostConfig.SecurityOpt", option, f"security option {_cut(option)}"
            )
    for field, paths in (
        ("HostConfig.MaskedPaths", create.masked_paths),
        ("HostConfig.ReadonlyPaths", create.readonly_paths),
    ):
        if paths is not None:
            return _refuse(
                policy, field, str(list(paths)), f"{field.partition('.')[2]} (it unmasks /proc)"
            )
    return None


def _listed(
    policy: str, field: str, what: str, values: Iterable[str], allowed: Sequence[str]
) -> Refusal | None:
    for value in values:
        if value not in allowed:
            return _refuse(policy, field, value, f"{what} {value}".rstrip())
    return None


def _host_reach(policy: str, rules: CreateRules, create: gobind.Create) -> Refusal | None:
    runtime = [create.runtime] if create.runtime else []
    parent = [create.cgroup_parent] if create.cgroup_parent else []
    for field, what, values, allowed in (
        ("HostConfig.Devices", "device", create.devices, rules.devices),
        (
            "HostConfig.DeviceRequests",
            "device requests of driver",
            create.device_requests,
            rules.device_requests,
        ),
        (
            "HostConfig.DeviceCgroupRules",
            "device cgroup rule",
            create.device_cgroup_rules,
            rules.device_cgroup_rules,
        ),
        ("HostConfig.Runtime", "runtime", runtime, rules.runtimes),
        ("HostConfig.CgroupParent", "cgroup parent", parent, rules.cgroup_parents),
        ("HostConfig.Sysctls", "sysctl", [name for name, _ in create.sysctls], rules.sysctls),
        ("HostConfig.GroupAdd", "group", create.group_add, rules.group_add),
    ):
        refusal = _listed(policy, field, what, values, allowed)
        if refusal:
            return refusal
    return None


def _pattern(text: str, resolver: Resolver) -> re.Pattern[str] | None:
    """A glob of ``images`` as a regex over full names: ``*`` within one component,
    no tag meaning any tag. None if it names nothing."""
    name = text.replace("*", _STAR)
    if ":" not in name.rpartition("/")[2]:
        name += ":" + _STAR
    full = resolver.image(name)
    if full is None:
        return None
    return re.compile(re.escape(full).replace(_STAR, "[^/]*"))


def _image(policy: str, rules: CreateRules, image: str, resolver: Resolver) -> Refusal | None:
    if rules.images is None or image in rules.images:
        return None
    full = None if _HEX.fullmatch(image) or "@" in image else resolver.image(image)
    if full is not None:
        for text in rules.images:
            pattern = None if "@" in text else _pattern(text, resolver)
            if pattern is not None and pattern.fullmatch(full):
                return None
    return _refuse(policy, "Image", image, f"image {image} (allowed: {', '.join(rules.images)})")


def judge_create(
    policy: str, rules: CreateRules, create: gobind.Create, resolver: Resolver
) -> Refusal | None:
    if create.privileged and not rules.privileged:
        return _refuse(policy, "HostConfig.Privileged", "true", "privileged containers")
    return (
        _mounts(policy, rules, create, resolver)
        or _namespaces(policy, rules, create)
        or _security(policy, rules, create)
        or _host_reach(policy, rules, create)
        or _image(policy, rules, create.image, resolver)
    )


_UID = re.compile(r"[+-]?[0-9]+")
"""A uid as Go's ``strconv.Atoi`` reads it, for runc's user lookup: ``+0`` and ``-0`` are 0."""


def _is_root(user: str) -> bool:
    name = user.partition(":")[0].strip()
    return name == "root" or (_UID.fullmatch(name) is not None and int(name) == 0)


def judge_exec(policy: str, rules: CreateRules, exec_: gobind.Exec) -> Refusal | None:
    if exec_.privileged and not rules.privileged:
        return _refuse(policy, "Privileged", "true", "privileged exec")
    if not rules.exec_user_root and _is_root(exec_.user):
        return _refuse(policy, "User", exec_.user, f"exec as root (User {exec_.user!r})")
    return None


def judge_volume(
    policy: str, rules: CreateRules, volume: gobind.Volume, resolver: Resolver
) -> Refusal | None:
    return _local_volume(policy, rules, volume.driver, volume.options, "DriverOpts", resolver)


def unsafe_folders(
    where: str, rules: CreateRules, owner_mode: Callable[[str], tuple[int, int] | None]
) -> list[str]:
    """``check``'s warnings of the ``binds_under`` folders a caller could swap a symlink
    into; ``owner_mode`` gives a path's owner uid and mode (None: not there)."""
    lines = []
    for folder in rules.binds_under:
        found = owner_mode(folder)
        if found is None:
            lines.append(f"warning: {where}.binds_under: {folder} does not exist")
            continue
        uid, mode = found
        if uid != 0 or mode & 0o022:
            lines.append(
                f"warning: {where}.binds_under: {folder} can be written by others than root "
                f"(owner uid {uid}, mode {mode & 0o7777:o}): a caller can swap a checked "
                "folder for a symlink out before the container starts"
            )
            continue
        for above in _ancestors(folder):
            found = owner_mode(above)
            if found is not None and (found[0] != 0 or _shared_writable(found[1])):
                lines.append(
                    f"warning: {where}.binds_under: {folder} lies under {above}, which others "
                    "than root can write in: the way to it can be redirected"
                )
                break
    return lines


def _ancestors(folder: str) -> list[str]:
    out = []
    while folder != "/":
        folder = posixpath.dirname(folder)
        out.append(folder)
    return out


def _shared_writable(mode: int) -> bool:
    """Writable by group or others, without the sticky bit that keeps their entries theirs."""
    return bool(mode & 0o022) and not mode & 0o1000

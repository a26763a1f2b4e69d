"""bodychecks: each check of [policies.NAME.create], its config, and the key tricks through it."""

from __future__ import annotations

import json
import posixpath
from typing import Any

import pytest

from proxy.recipes.reference import full_name
from proxy.wire import gobind
from proxy.wire.bodychecks import (
    CREATE,
    EXEC,
    VOLUME,
    CreateRules,
    Refusal,
    create_rules,
    judge,
    unsafe_folders,
)
from proxy.wire.hostpath import resolve

RUNNER = create_rules({"binds_under": ["/srv/agents"]}, "policies.runner.create")


class Host:
    """The daemon's view of paths: ``links`` are symlinks (folder -> target)."""

    def __init__(self, links: dict[str, str] | None = None) -> None:
        self.links = links or {}

    def path(self, path: str) -> str:
        for link, target in self.links.items():
            if path == link or path.startswith(link + "/"):
                return target + path[len(link) :]
        return path

    def image(self, reference: str) -> str | None:
        return full_name(reference)


def create(rules: CreateRules = RUNNER, host: Host | None = None, **fields: Any) -> str | None:
    """The refusal's text for a create with these HostConfig fields (and ``Image``)."""
    image = fields.pop("Image", "app:1")
    networking = fields.pop("NetworkingConfig", None)
    body: dict[str, Any] = {"Image": image, "HostConfig": fields}
    if networking is not None:
        body["NetworkingConfig"] = networking
    refusal = judge("runner", rules, CREATE, json.dumps(body).encode(), host or Host())
    return refusal.reason if refusal else None


def test_privileged() -> None:
    assert create(Privileged=True) == 'policy "runner" refuses privileged containers'
    assert create(Privileged=False) is None
    assert create(create_rules({"privileged": True}, "x"), Privileged=True) is None


@pytest.mark.parametrize(
    ("binds", "refused"),
    [
        (["/srv/agents/x:/w"], None),
        (["//srv/agents/x:/w"], None),
        (["/srv/agents/x/:/w"], None),
        (["data:/w", "/w"], None),  # a named and an anonymous volume
        (["/etc:/host"], "/etc"),
        (["/:/host"], "/"),
        (["/srv/agentsX:/w"], "/srv/agentsX"),
        (["/srv/agents/../../etc:/w"], "/etc"),
        (["/srv/agents/x:/w", "/etc:/e:rw"], "/etc"),
    ],
)
def test_binds_are_judged_by_their_cleaned_source(binds: list[str], refused: str | None) -> None:
    expected = refused and f'policy "runner" refuses bind mount {refused} (allowed: /srv/agents)'
    assert create(Binds=binds) == expected


@pytest.mark.parametrize(
    "source",
    ["/srv/agents", "/srv/agents/x/d", "/srv/agents/x/d/e", "/srv/agents/x/.."],
)
def test_only_a_folder_directly_in_a_binds_under_folder_is_a_bind_source(source: str) -> None:
    """A container with ``x`` mounted can write in it, and dockerd follows symlinks again
    at start: ``x/d``, checked at create, can be a symlink out by then."""
    for binds in ([f"{source}:/w"], [f"{source}:/w:ro"]):
        reason = create(Binds=binds)
        assert reason is not None and reason.startswith(
            f'policy "runner" refuses bind mount {posixpath.normpath(source)} (only folders '
            "directly in /srv/agents:"
        ), reason
    assert create(Mounts=[{"Type": "bind", "Source": source}]) == reason
    rules = create_rules({"binds_under": ["/srv/agents", "/srv/agents/x/d"]}, "x")
    assert create(rules, Binds=["/srv/agents/x/d/y:/w"]) is None
    # x holds a binds_under folder: a container writing in x could swap d
    assert create(rules, Binds=["/srv/agents/x:/w"]) is not None


def test_no_binds_under_means_no_bind_mounts() -> None:
    reason = create(CreateRules(), Binds=["/srv/agents/x:/w"])
    assert reason == 'policy "runner" refuses bind mount /srv/agents/x (allowed: none)'


def test_a_symlink_out_of_an_allowed_folder_is_refused() -> None:
    host = Host({"/srv/agents/x": "/etc"})
    reason = create(host=host, Binds=["/srv/agents/x:/w"])
    assert reason == (
        'policy "runner" refuses bind mount /srv/agents/x (which resolves to /etc) '
        "(allowed: /srv/agents)"
    )
    assert create(host=host, Mounts=[{"Type": "bind", "Source": "/srv/agents/x/passwd"}])


def volume_mount(options: dict[str, str], name: str = "local") -> dict[str, Any]:
    return {
        "Type": "volume",
        "Target": "/w",
        "VolumeOptions": {"DriverConfig": {"Name": name, "Options": options}},
    }


@pytest.mark.parametrize(
    ("mount", "refused"),
    [
        ({"Type": "bind", "Source": "/srv/agents/x", "Target": "/w"}, False),
        ({"Type": "bind", "Source": "/", "Target": "/w"}, True),
        ({"Type": "tmpfs", "Target": "/w"}, False),
        ({"Type": "volume", "Source": "data", "Target": "/w"}, False),
        (volume_mount({"type": "none", "o": "bind", "device": "/"}), True),
        (volume_mount({"type": "none", "o": "ro,rbind", "device": "etc"}), True),
        (volume_mount({"type": "ext4", "device": "/dev/sda1"}), True),
        (volume_mount({"type": "none", "o": "bind", "device": "/srv/agents/v"}), False),
        (volume_mount({"type": "nfs", "o": "addr=10.0.0.1", "device": ":/export"}), False),
        (volume_mount({"type": "tmpfs", "device": "tmpfs"}), False),
        (volume_mount({"o": "bind", "device": "/"}, name="someplugin"), False),
    ],
)
def test_mounts(mount: dict[str, Any], refused: bool) -> None:
    reason = create(Mounts=[mount])
    assert (reason is not None) == refused
    assert reason is None or reason.startswith('policy "runner" refuses bind mount /')


KERNEL_VOLUMES = [
    {"type": "proc", "device": "proc"},  # the host's /proc, /proc/sys writable
    {"type": "sysfs", "device": "sysfs"},
    {"type": "cgroup2", "device": "cgroup2"},  # the host's cgroup root
    {"type": "overlay", "device": "overlay", "o": "lowerdir=/etc:/usr"},  # host folders
    {"device": "proc"},
    {"type": "overlay", "device": "/srv/agents/v", "o": "lowerdir=/etc:/usr"},  # device allowed
]
"""Local volumes that mount the host's own filesystems without a device path: each
showed the host's processes, interfaces, cgroups or /etc in a container on both daemons."""


@pytest.mark.parametrize("options", KERNEL_VOLUMES)
def test_a_local_volume_of_a_host_filesystem_is_refused(options: dict[str, str]) -> None:
    kind = options.get("type", "")
    assert create(Mounts=[volume_mount(options)]) == (
        f'policy "runner" refuses local volume of type {kind!r} (allowed: tmpfs, nfs, nfs4, cifs)'
    )
    body = json.dumps({"Name": "v", "DriverOpts": options}).encode()
    refusal = judge("runner", RUNNER, VOLUME, body, Host())
    assert refusal is not None and refusal.field == "DriverOpts.type"
    assert refusal.value == kind
    plugin = json.dumps({"Driver": "someplugin", "DriverOpts": options}).encode()
    assert judge("runner", RUNNER, VOLUME, plugin, Host()) is None


def test_a_bind_flag_makes_any_local_volume_a_bind() -> None:
    """``o=bind`` is ``MS_BIND``: the kernel then ignores the type and binds the device."""
    reason = create(Mounts=[volume_mount({"type": "tmpfs", "o": "bind", "device": "/"})])
    assert reason == 'policy "runner" refuses bind mount / (allowed: /srv/agents)'


class Kernel(Host):
    """Paths resolved as the kernel resolves them: ``..`` after a symlink from where it led."""

    def path(self, path: str) -> str:
        return resolve(path, self.links.get)


def test_a_volume_device_is_resolved_as_written_and_a_bind_source_cleaned_first() -> None:
    """dockerd cleans a bind source (``path.Clean``) but hands a local volume's
    ``device`` to mount(2) as it is, which follows ``d`` before it goes up."""
    kernel = Kernel({"/srv/agents/x/d": "/etc/ssl"})
    options = {"type": "none", "o": "bind", "device": "/srv/agents/x/d/.."}
    expected = (
        'policy "runner" refuses bind mount /srv/agents/x/d/.. (which resolves to /etc) '
        "(allowed: /srv/agents)"
    )
    assert create(host=kernel, Mounts=[volume_mount(options)]) == expected
    body = json.dumps({"Name": "v", "DriverOpts": options}).encode()
    refusal = judge("runner", RUNNER, VOLUME, body, kernel)
    assert refusal is not None and refusal.reason == expected
    assert create(host=kernel, Binds=["/srv/agents/x/d/..:/w"]) is None  # x itself


def test_volumes_from() -> None:
    assert create(VolumesFrom=["other:ro"]) == 'policy "runner" refuses VolumesFrom other:ro'


HOST_REACH = [
    ("NetworkMode", "host", "network mode host (allowed: none)", "network_modes", "host"),
    ("NetworkMode", "container:db", "network mode container:db", "network_modes", "container"),
    ("PidMode", "host", "pid namespace host", "namespaces", "pid=host"),
    ("PidMode", "container:db", "pid namespace container:db", "namespaces", "pid=container"),
    ("IpcMode", "host", "ipc namespace host", "namespaces", "ipc=host"),
    ("IpcMode", "container:db", "ipc namespace container:db", "namespaces", "ipc=container"),
    ("UTSMode", "host", "uts namespace host", "namespaces", "uts=host"),
    ("UsernsMode", "host", "userns namespace host", "namespaces", "userns=host"),
    ("CgroupnsMode", "host", "cgroupns namespace host", "namespaces", "cgroupns=host"),
    ("CapAdd", ["SYS_ADMIN"], "capability SYS_ADMIN", "cap_add", "sys_admin"),
    ("CapAdd", "cap_sys_admin", "capability cap_sys_admin", "cap_add", "CAP_SYS_ADMIN"),
    ("CapAdd", ["ALL"], "capability ALL", "cap_add", "all"),
    ("Devices", [{"PathOnHost": "/dev/sda"}], "device /dev/sda", "devices", "/dev/sda"),
    ("DeviceRequests", [{"Driver": "gpu"}], "device requests of driver gpu", "device_requests",
     "gpu"),
    ("DeviceCgroupRules", ["c 1:3 r"], "device cgroup rule c 1:3 r", "device_cgroup_rules",
     "c 1:3 r"),
    ("Runtime", "runsc", "runtime runsc", "runtimes", "runsc"),
    ("CgroupParent", "/", "cgroup parent /", "cgroup_parents", "/"),
    ("Sysctls", {"kernel.msgmax": "1"}, "sysctl kernel.msgmax", "sysctls", "kernel.msgmax"),
    ("GroupAdd", ["disk"], "group disk", "group_add", "disk"),
    ("MaskedPaths", [], "MaskedPaths (it unmasks /proc)", None, None),
    ("ReadonlyPaths", [], "ReadonlyPaths (it unmasks /proc)", None, None),
] + [
    ("SecurityOpt", [option], f"security option {option}", "security_opt", option)
    for option in [
        "seccomp=unconfined",
        "apparmor=unconfined",
        "label=disable",
        "label:disable",
        "disable",
        "label=type:spc_t",
        "systempaths=unconfined",
    ]
]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "refused", "key", "entry"), HOST_REACH)
def test_host_reach_is_refused_unless_listed(
    field: str, value: Any, refused: str, key: str | None, entry: str | None
) -> None:
    reason = create(**{field: value})
    assert reason is not None and reason.startswith(f'policy "runner" refuses {refused}')
    if key is not None:
        assert create(create_rules({key: [entry]}, "x", RUNNER), **{field: value}) is None


def test_a_network_named_host_in_endpoints_config_is_host_networking() -> None:
    endpoints = {"EndpointsConfig": {"host": {}}}
    assert create(NetworkingConfig=endpoints) == (
        'policy "runner" refuses network mode host (allowed: none)'
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"NetworkMode": "bridge"},
        {"NetworkMode": "mynet", "NetworkingConfig": {"EndpointsConfig": {"mynet": None}}},
        {"NetworkMode": "none", "PidMode": "", "IpcMode": "shareable", "CgroupnsMode": "private"},
        {"SecurityOpt": ["no-new-privileges", "no-new-privileges:true"]},
        {"MaskedPaths": None, "ReadonlyPaths": None},  # what the docker CLI sends
        {"CapAdd": None, "Devices": [], "Sysctls": {}, "Runtime": "", "CgroupParent": ""},
    ],
)
def test_what_a_plain_docker_run_sends_passes(fields: dict[str, Any]) -> None:
    assert create(**fields) is None


def test_a_seccomp_profile_is_refused_and_shown_cut_short() -> None:
    profile = json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []} | {"x": "y" * 90})
    body = json.dumps({"Image": "a", "HostConfig": {"SecurityOpt": [f"seccomp={profile}"]}})
    refusal = judge("runner", RUNNER, CREATE, body.encode(), Host())
    assert refusal is not None and refusal.field == "HostConfig.SecurityOpt"
    assert len(refusal.value) <= 63 and refusal.value.endswith("...")
    assert len(refusal.reason) < 120


IMAGES = create_rules({"images": ["myorg/*", "accearly:*", "2b972d", "busybox"]}, "x", RUNNER)


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("myorg/app", True),
        ("myorg/app:1.2", True),
        ("docker.io/myorg/app:1", True),
        ("accearly:3", True),
        ("accearly", True),
        ("busybox", True),
        ("busybox:latest", True),
        ("busybox:1", True),  # no tag in the pattern: any tag
        ("2b972d", True),  # listed word for word
        ("myorg/team/app", False),
        ("other/app", False),
        ("registry.example.com/myorg/app", False),
        ("2b972", False),  # a short id
        ("sha256:" + "a" * 64, False),
        ("a" * 64, False),
        ("myorg/app@sha256:" + "a" * 64, False),
        ("", False),
        ("Not A Name", False),
    ],
)
def test_images(image: str, allowed: bool) -> None:
    reason = create(IMAGES, Image=image)
    assert (reason is None) == allowed
    if not allowed:
        assert reason == (
            f'policy "runner" refuses image {image} (allowed: myorg/*, accearly:*, 2b972d, busybox)'
        )
    assert create(Image=image) is None  # no images list: any


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"Privileged":true}', 'policy "runner" refuses privileged exec'),
        (b'{"privileged":true,"User":"root"}', 'policy "runner" refuses privileged exec'),
        (b'{"User":"root","Cmd":["sh"],"Env":["SECRET=1"]}', None),
    ],
)
def test_exec(body: bytes, reason: str | None) -> None:
    refusal = judge("runner", RUNNER, EXEC, body, Host())
    assert (refusal.reason if refusal else None) == reason


@pytest.mark.parametrize(
    ("user", "refused"),
    [
        *[("root", True), ("0", True), ("00", True), ("root:root", True), ("0:1000", True)],
        # Go's strconv.Atoi takes a sign: runc ran each of these as uid 0 on both daemons.
        *[("+0", True), ("-0", True), ("+00:+0", True)],
        *[("", False), ("1000", False), ("1000:0", False), ("rooty", False)],
    ],
)
def test_exec_user_root(user: str, refused: bool) -> None:
    rules = create_rules({"exec_user_root": False}, "x", RUNNER)
    refusal = judge("runner", rules, EXEC, json.dumps({"User": user}).encode(), Host())
    assert (refusal is not None) == refused
    assert judge("runner", RUNNER, EXEC, json.dumps({"User": user}).encode(), Host()) is None


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ({"type": "none", "o": "bind", "device": "/"}, True),
        ({"type": "none", "o": "bind", "device": "/srv/agents/v"}, False),
        ({"type": "tmpfs", "device": "tmpfs", "o": "size=10m"}, False),
        ({}, False),
    ],
)
def test_volume_create(options: dict[str, str], refused: bool) -> None:
    body = json.dumps({"Name": "v", "DriverOpts": options}).encode()
    refusal = judge("runner", RUNNER, VOLUME, body, Host())
    assert (refusal is not None) == refused
    if refusal:
        assert refusal == Refusal(
            "DriverOpts.device", "/", 'policy "runner" refuses bind mount / (allowed: /srv/agents)'
        )
    plugin = json.dumps({"Driver": "someplugin", "DriverOpts": options}).encode()
    assert judge("runner", RUNNER, VOLUME, plugin, Host()) is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"Image":"a","hostconfig":{"Privileged":true}}', "privileged containers"),
        (b'{"Image":"a","Privileged":true}', "privileged containers"),
        (b'{"Image":"a","HostConfig":{"maskedpaths":[]}}', "MaskedPaths (it unmasks /proc)"),
    ],
)
def test_key_tricks_read_as_dockerd_reads_them_are_refused(body: bytes, reason: str) -> None:
    refusal = judge("runner", RUNNER, CREATE, body, Host())
    assert refusal is not None and refusal.reason == f'policy "runner" refuses {reason}'


@pytest.mark.parametrize(
    "body",
    [
        '{"Image":"a","HostConfig":{"Bind\u017f":["/:/host"]}}'.encode(),
        b'{"Image":"a","HostConfig":{"Privileged":true},"HostConfig":{"NetworkMode":"host"}}',
        b'{"Image":"a","HostConfig":{"privileged":false,"Privileged":true}}',
        b'{"Image":"a"',
        b"Image=a",
    ],
)
def test_key_tricks_dockerd_would_merge_are_not_read(body: bytes) -> None:
    with pytest.raises(gobind.Refused):
        judge("runner", RUNNER, CREATE, body, Host())


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ([], "policies.p.create: must be a table"),
        ({"privilegd": True}, "policies.p.create.privilegd: unknown key (known: "),
        ({"privileged": "yes"}, "policies.p.create.privileged: must be true or false"),
        ({"binds_under": "/srv"}, "policies.p.create.binds_under: must be a list of strings"),
        ({"binds_under": ["srv"]}, "policies.p.create.binds_under: 'srv' is not an absolute path"),
        ({"network_modes": ["bridge"]}, "policies.p.create.network_modes: 'bridge' is not one of"),
        ({"namespaces": ["pid:host"]}, "policies.p.create.namespaces: 'pid:host' is not one of"),
        ({"cap_add": ["SYS ADMIN"]}, "policies.p.create.cap_add: 'SYS ADMIN' is not a capability"),
        ({"images": [1]}, "policies.p.create.images: must be a list of strings"),
    ],
)
def test_config_errors_name_the_key_in_one_line(table: Any, error: str) -> None:
    with pytest.raises(ValueError) as caught:
        create_rules(table, "policies.p.create")
    assert str(caught.value).startswith(error)
    assert "\n" not in str(caught.value)


def test_a_table_changes_only_its_keys_of_the_rules_it_extends() -> None:
    base = create_rules({"binds_under": ["/srv/agents/"], "cap_add": ["NET_ADMIN"]}, "a")
    child = create_rules({"privileged": True}, "b", base)
    assert child == CreateRules(
        privileged=True, binds_under=("/srv/agents",), cap_add=("NET_ADMIN",)
    )
    assert create_rules({}, "c") == CreateRules()


def test_check_warns_of_binds_under_folders_others_can_write_in() -> None:
    tree = {
        "/": (0, 0o40755),
        "/srv": (0, 0o40755),
        "/srv/agents": (0, 0o40755),
        "/srv/open": (0, 0o40777),
        "/srv/theirs": (1000, 0o40755),
        "/tmp": (0, 0o41777),
        "/tmp/agents": (0, 0o40755),
        "/home": (1000, 0o40755),
        "/home/in": (0, 0o40755),
    }
    folders = ["/srv/agents", "/srv/open", "/srv/theirs", "/tmp/agents", "/home/in", "/gone"]
    rules = create_rules({"binds_under": folders}, "x")
    lines = unsafe_folders("policies.p.create", rules, tree.get)
    assert [line.split(": ")[2].split(" ")[0] for line in lines] == [
        "/srv/open",
        "/srv/theirs",
        "/home/in",
        "/gone",
    ]
    assert "lies under /home, which others than root can write in" in lines[2]
    assert "mode 777" in lines[0] and "owner uid 1000" in lines[1]


def test_a_bind_whose_daemon_view_cannot_be_had_is_refused() -> None:
    class Blind(Host):
        def path(self, path: str) -> str | None:
            return None

    assert create(host=Blind(), Binds=["/srv/agents/x:/w"]) == (
        'policy "runner" refuses bind mount /srv/agents/x '
        "(where it leads in dockerd's root cannot be seen)"
    )
    assert create(host=Blind(), Binds=["data:/w"]) is None

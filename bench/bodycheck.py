"""What the body checks of a policy cost, in process: microseconds per create body.

Usage (no root, no daemon)::

    python bench/bodycheck.py [--bodies 20000] [--repeats 5]

Why: a create through a listener whose policy has body checks is read as
dockerd reads it (``gobind``) and judged (``bodychecks``) before a byte of it
reaches the daemon. The heal path reads the same body already, through the
same reader, for its ``Image``; so what a create through ``runner`` adds is
the judging, and on a listener without a policy nothing. The body is the one
the docker 28 CLI sends for ``docker run --rm -v /srv/agents/x:/w -e A=1
busybox true`` (1,749 bytes), captured from the CLI. Rows, best of
``--repeats``:

- ``json.loads`` alone, for scale: Python's C reader, duplicates dropped;
- the read (what the heal path pays with or without a policy);
- the read and the checks under ``runner`` with ``binds_under`` and
  ``images`` set (a resolver that returns paths as they are: the real one's
  ``realpath`` is I/O and is measured with the data path);
- the read and the checks of a refused create (``Privileged``), its
  refusal text included.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as ``python bench/bodycheck.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.recipes.reference import full_name
from proxy.wire import gobind
from proxy.wire.bodychecks import CREATE, create_rules, judge

CLI_BODY = (
    b'{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":true,'
    b'"AttachStderr":true,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":["A=1"],'
    b'"Cmd":["true"],"Image":"busybox","Volumes":{},"WorkingDir":"","Entrypoint":null,'
    b'"OnBuild":null,"Labels":{},"HostConfig":{"Binds":["/srv/agents/x:/w"],'
    b'"ContainerIDFile":"","LogConfig":{"Type":"","Config":{}},"NetworkMode":"default",'
    b'"PortBindings":{},"RestartPolicy":{"Name":"no","MaximumRetryCount":0},'
    b'"AutoRemove":true,"VolumeDriver":"","VolumesFrom":null,"ConsoleSize":[0,0],'
    b'"CapAdd":null,"CapDrop":null,"CgroupnsMode":"","Dns":[],"DnsOptions":[],'
    b'"DnsSearch":[],"ExtraHosts":null,"GroupAdd":null,"IpcMode":"","Cgroup":"",'
    b'"Links":null,"OomScoreAdj":0,"PidMode":"","Privileged":false,"PublishAllPorts":false,'
    b'"ReadonlyRootfs":false,"SecurityOpt":null,"UTSMode":"","UsernsMode":"","ShmSize":0,'
    b'"Isolation":"","CpuShares":0,"Memory":0,"NanoCpus":0,"CgroupParent":"",'
    b'"BlkioWeight":0,"BlkioWeightDevice":[],"BlkioDeviceReadBps":[],'
    b'"BlkioDeviceWriteBps":[],"BlkioDeviceReadIOps":[],"BlkioDeviceWriteIOps":[],'
    b'"CpuPeriod":0,"CpuQuota":0,"CpuRealtimePeriod":0,"CpuRealtimeRuntime":0,'
    b'"CpusetCpus":"","CpusetMems":"","Devices":[],"DeviceCgroupRules":null,'
    b'"DeviceRequests":null,"MemoryReservation":0,"MemorySwap":0,"MemorySwappiness":-1,'
    b'"OomKillDisable":false,"PidsLimit":0,"Ulimits":[],"CpuCount":0,"CpuPercent":0,'
    b'"IOMaximumIOps":0,"IOMaximumBandwidth":0,"MaskedPaths":null,"ReadonlyPaths":null},'
    b'"NetworkingConfig":{"EndpointsConfig":{"default":{"IPAMConfig":null,"Links":null,'
    b'"Aliases":null,"MacAddress":"","DriverOpts":null,"GwPriority":0,"NetworkID":"",'
    b'"EndpointID":"","Gateway":"","IPAddress":"","IPPrefixLen":0,"IPv6Gateway":"",'
    b'"GlobalIPv6Address":"","GlobalIPv6PrefixLen":0,"DNSNames":null}}}}'
)
"""What ``docker run --rm -v /srv/agents/x:/w -e A=1 busybox true`` (CLI 28.2) posts."""
PRIVILEGED = CLI_BODY.replace(b'"Privileged":false', b'"Privileged":true')
RULES = create_rules(
    {"binds_under": ["/srv/agents"], "images": ["busybox", "myorg/*"]}, "policies.runner.create"
)


class AsIs:
    """Paths as they are; image names as the proxy normalises them."""

    def path(self, path: str) -> str:
        return path

    def image(self, reference: str) -> str | None:
        return full_name(reference)


def rows() -> dict[str, Callable[[], object]]:
    resolver = AsIs()
    if judge("runner", RULES, CREATE, CLI_BODY, resolver) is not None:
        raise RuntimeError("the CLI's body is refused: the bench would time the wrong path")
    return {
        "json.loads alone (for scale)": lambda: json.loads(CLI_BODY),
        "read (gobind; the heal path pays it already)": lambda: gobind.read_create(CLI_BODY),
        "read and judge, runner, let through": lambda: judge(
            "runner", RULES, CREATE, CLI_BODY, resolver
        ),
        "read and judge, runner, refused (privileged)": lambda: judge(
            "runner", RULES, CREATE, PRIVILEGED, resolver
        ),
    }


def per_body(call: Callable[[], object], n: int, repeats: int) -> float:
    """The best of ``repeats`` runs of ``n`` calls, in microseconds per call."""
    for _ in range(min(n, 1000)):
        call()
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        for _ in range(n):
            call()
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"a create body of {len(CLI_BODY)} bytes (docker CLI 28.2), best of {args.repeats}")
    for name, call in rows().items():
        print(f"{per_body(call, args.bodies, args.repeats):7.2f} µs per body  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

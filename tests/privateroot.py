"""The real proxy in a mount namespace of its own, as the unit's ``PrivateTmp=yes`` puts it.

Usage: ``python tests/privateroot.py FOLDER serve ...``. The proxy runs with
an empty tmpfs over FOLDER, which dockerd still sees as it is: what the
proxy finds at a path there is not what the daemon will mount.
"""

from __future__ import annotations

import os
import sys

folder, args = sys.argv[1], sys.argv[2:]
script = f'mount -t tmpfs tmpfs "{folder}" && exec "$0" -m proxy "$@"'
os.execvp(
    "unshare",
    ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable, *args],
)

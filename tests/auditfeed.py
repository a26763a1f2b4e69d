"""The real proxy, with one door for tests: SIGUSR1 puts audit records through its sink.

Usage: ``python tests/auditfeed.py FEED serve ...``. On SIGUSR1 the running
proxy reads FEED, a JSON list of ``AccessRecord`` fields, and records each
on its event loop, as the data path reports an exchange's end. Everything
else is ``python -m proxy``: the config, the signals, start-up and shutdown.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from proxy.service import cli
from proxy.service.app import App
from proxy.wire.access import AccessRecord, Peer, Verdict


def access_record(fields: dict[str, Any]) -> AccessRecord:
    peer, verdict = fields.pop("peer"), fields.pop("verdict")
    return AccessRecord(
        peer=Peer(**{**peer, "groups": tuple(peer["groups"])}) if peer else None,
        verdict=Verdict(**verdict) if verdict else None,
        **fields,
    )


def main() -> int:
    feed = Path(sys.argv.pop(1))
    run = App.run

    async def fed(app: App) -> int:
        def record() -> None:
            assert app.audit is not None
            for fields in json.loads(feed.read_text()):
                app.audit.record(access_record(fields))

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, record)
        return await run(app)

    App.run = fed  # type: ignore[method-assign]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())

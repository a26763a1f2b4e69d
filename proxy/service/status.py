"""``docker-heal-proxy status``: the healer's state, for a person at a terminal.

Rules:
- The only source is ``GET /_heal/status`` on the proxy's own Unix socket.
  Recipe output can hold secrets, so the state is never served on the
  metrics listener; whoever may talk to the Docker socket may read it.
- ``render`` is pure: a snapshot (the JSON ``Healer.snapshot`` returns) in,
  text out. It tolerates missing keys, since the snapshot crossed a process
  boundary and may come from another version of the proxy.
- The socket is found like the docker CLI finds its daemon
  (``proxyclient.socket_path``).
- ``--watch`` redraws once a second until Ctrl-C. An error while fetching
  (say the proxy is restarting) is shown in the frame, not fatal: a watch
  should outlive a restart. On a terminal a frame replaces the last one; into
  a pipe frames are appended, so the output stays readable in a log.
- What the proxy sent is shown, never obeyed: each line goes through
  ``terminaltext`` (a build's output or a tag can hold escape sequences, and
  anyone who can reach the socket can start a build). Only ``CLEAR``, which
  is this module's own, reaches the terminal as a control sequence.

Theory: one blocking request per frame (``proxyclient.ask``), no event loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from ..wire.routes import STATUS_PATH
from .proxyclient import AskError, ask
from .terminaltext import harmless_lines

CLEAR = "\x1b[H\x1b[2J"
"""Cursor home, then erase the screen: a full redraw without flicker-prone scrolling."""


class StatusError(Exception):
    """The status could not be fetched; the text says why, for a person."""


def fetch(path: str, timeout: float = 10) -> dict[str, Any]:
    """The snapshot the proxy at ``path`` serves."""
    try:
        status, body = ask(path, "GET", STATUS_PATH, timeout)
    except AskError as exc:
        raise StatusError(str(exc)) from None
    if status != 200:
        raise StatusError(f"{path} answered {STATUS_PATH} with {status}")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise StatusError(f"{path} sent a status that is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StatusError(f"{path} sent a status that is not a JSON object")
    return data


def _seconds(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.1f}s"
    return "?"


def _running(snapshot: Mapping[str, Any]) -> list[str]:
    heals = snapshot.get("in_progress") or []
    waiters = snapshot.get("waiters") or 0
    waiting = f", {waiters} request{'s' if waiters != 1 else ''} waiting" if waiters else ""
    # A push goes on after its heal has answered, so it is listed on its own.
    pushes = [f"Cache pushes under way: {push}" for push in snapshot.get("cache_pushes") or []]
    if not heals:
        return [f"Heals in progress: none{waiting}", *pushes]
    lines = [f"Heals in progress ({len(heals)}){waiting}:"]
    for heal in heals:
        lines.append(
            f"  {heal.get('image', '?')}  {heal.get('phase', '?')}  "
            f"{_seconds(heal.get('elapsed_seconds'))}  by {heal.get('recipe', '?')}"
        )
        if heal.get("cache"):
            lines.append(f"    cache: {heal['cache']}")
        lines += [f"    | {line}" for line in heal.get("last_lines") or []]
        if heal.get("log"):
            lines.append(f"    log: {heal['log']}")
    return lines + pushes


def _proactive(snapshot: Mapping[str, Any]) -> list[str]:
    """Remembered tags, the last reconcile, the event stream and what waits, if enabled."""
    view = snapshot.get("proactive")
    if not isinstance(view, Mapping) or not view.get("enabled"):
        return []
    events = view.get("events") or {}
    lines = [
        "",
        f"Proactive heals: last reconcile {view.get('last_reconcile') or 'not yet'}, "
        f"image events {'up' if events.get('up') else 'DOWN'} ({events.get('detail', '?')})",
    ]
    for reason, why in (view.get("blocked") or {}).items():
        lines.append(f"  blocked by {reason}: {why}")
    queued = view.get("queued") or []
    if queued:
        lines.append(f"  queued ({len(queued)}): {', '.join(map(str, queued))}")
    remembered = view.get("remembered") or []
    lines.append(f"  remembered tags ({len(remembered)}):" if remembered else "  remembered: none")
    lines += [f"    {tag}" for tag in remembered]
    return lines


def _stale(snapshot: Mapping[str, Any]) -> list[str]:
    """Stale mode: each stale tag and the first input that differs, adoptions,
    failed rebuilds and inputs that cannot be hashed; only when it is on."""
    view = snapshot.get("stale")
    if not isinstance(view, Mapping) or not view.get("enabled"):
        return []
    watched = view.get("watched") or []
    stale: Mapping[str, str] = view.get("stale") or {}
    lines = ["", f"Stale mode: {len(watched)} tags watched, {len(stale)} stale"]
    sections = (
        ("stale (rebuilt by the next create)", stale),
        ("adopted (built by hand; judged by Created)", view.get("adopted") or {}),
        ("rebuilds that failed (the old image runs)", view.get("failed_rebuilds") or {}),
        ("inputs that cannot be hashed", view.get("inputs_problems") or {}),
    )
    for title, entries in sections:
        if entries:
            lines.append(f"  {title}:")
            lines += [
                f"    {tag}  {(str(why).splitlines() or [''])[0]}" for tag, why in entries.items()
            ]
    return lines


def render(snapshot: Mapping[str, Any]) -> str:
    """The whole state: recipes, running heals with their last lines, last results,
    and proactive healing when it is on."""
    recipes = snapshot.get("recipes") or []
    lines = [f"Recipes ({len(recipes)}):" if recipes else "Recipes: none (pass-through only)"]
    for recipe in recipes:
        lines.append(
            f"  images[{recipe.get('index', '?')}]  {recipe.get('kind', '?'):<7}  "
            f"{recipe.get('match', '?')}"
        )
    lines.append("")
    lines += _running(snapshot)
    lines.append("")
    results: Mapping[str, Mapping[str, Any]] = snapshot.get("last_results") or {}
    lines.append(f"Last results ({len(results)}):" if results else "Last results: none yet")
    for image in sorted(results):
        result = results[image]
        message = str(result.get("message", "")).splitlines() or [""]
        source = f" ({result['source']})" if result.get("source") else ""
        lines.append(
            f"  {image}  {result.get('result', '?')}{source}  {result.get('finished_at', '?')}  "
            f"{_seconds(result.get('duration_seconds'))}  {message[0]}"
        )
        lines += [f"      {line}" for line in message[1:]]
    lines += _proactive(snapshot)
    lines += _stale(snapshot)
    return harmless_lines(lines)


def render_watch(snapshot: Mapping[str, Any], when: str) -> str:
    """One frame of ``--watch``: only the heals that are running, and when."""
    header = f"docker-heal-proxy status at {when} (Ctrl-C to stop)"
    return harmless_lines([header, "", *_running(snapshot)])


def watch(
    path: str,
    out: TextIO,
    *,
    interval: float = 1.0,
    clock: Callable[[], str] = lambda: time.strftime("%H:%M:%S"),
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Redraw the running heals every ``interval`` seconds; returns only by exception."""
    tty = out.isatty()
    while True:
        try:
            frame = render_watch(fetch(path), clock())
        except StatusError as exc:
            frame = harmless_lines([f"docker-heal-proxy status at {clock()}", "", str(exc)])
        out.write(CLEAR + frame if tty else frame + "\n")
        out.flush()
        sleep(interval)

"""Headless Chromium (Debian's `chromium`) for the dashboard: the DOM after load, and screenshots.

`make test` and `make screenshots` install it (`apt-get install chromium`). Each run gets a fresh
profile directory and the flags that keep it off the network: without them it waits on background
services that this kind of closed network never answers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from cli.exceptions import CliError

BINARY = "chromium"
TIMEOUT_SECONDS = 120.0  # a cold start on a loaded 2-core machine takes seconds, not minutes
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
# Injected into a copy of the page only, to learn how tall a full-page screenshot must be.
_MEASURE = (
    "<script>addEventListener('load', () => { document.body.dataset.pageHeight = "
    "Math.ceil(document.documentElement.scrollHeight); });</script>"
)


class ChromiumError(CliError):
    """Chromium is missing, failed or timed out."""


def binary() -> str:
    """The path of `chromium`, or ChromiumError saying how to install it."""
    found = shutil.which(BINARY)
    if found is None:
        raise ChromiumError(
            "chromium is not installed — `make test` and `make screenshots` install it (apt-get install chromium)"
        )
    return found


def run(*args: str, timeout: float = TIMEOUT_SECONDS) -> str:
    """Run headless Chromium with `args` in a fresh profile; its standard output."""
    with tempfile.TemporaryDirectory(prefix="pmon-chromium-") as profile:
        command = [binary(), *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ChromiumError(
                f"chromium did not finish in {timeout:.0f} s: {' '.join(command)}\nstderr: {_tail(exc.stderr)}"
            ) from exc
    if done.returncode != 0:
        raise ChromiumError(
            f"chromium exited with {done.returncode}: {' '.join(command)}\nstderr: {_tail(done.stderr)}"
        )
    return done.stdout


def dump_dom(page: Path, *, timeout: float = TIMEOUT_SECONDS) -> str:
    """The page's DOM once loaded (its scripts, if any, have run), serialized."""
    dom = run("--dump-dom", page.resolve().as_uri(), timeout=timeout)
    if "<html" not in dom:
        raise ChromiumError(f"chromium printed no DOM for {page}: {dom[:200]!r}")
    return dom


def page_height(page: Path) -> int:
    """The page's full height in CSS pixels at a 1280 px wide window."""
    with tempfile.TemporaryDirectory(prefix="pmon-measure-") as folder:
        copy = Path(folder) / page.name
        copy.write_text(page.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
        dom = run("--window-size=1280,800", "--dump-dom", copy.as_uri())
    found = re.search(r'data-page-height="(\d+)"', dom)
    if found is None:
        raise ChromiumError(f"could not measure the height of {page}")
    return int(found.group(1))


def screenshot(page: Path, png: Path, *, width: int = 1280, height: int | None = 2400) -> Path:
    """A PNG of the page at `width` x `height` (None: the whole page)."""
    png.parent.mkdir(parents=True, exist_ok=True)
    tall = page_height(page) if height is None else height
    run(f"--screenshot={png.resolve()}", f"--window-size={width},{tall}", page.resolve().as_uri())
    if not png.is_file() or png.stat().st_size == 0:
        raise ChromiumError(f"chromium wrote no screenshot to {png}")
    return png


def _tail(stderr: str | bytes | None, lines: int = 15) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else (stderr or "")
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty)"

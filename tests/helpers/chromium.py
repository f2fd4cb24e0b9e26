"""Headless Chromium (Debian's `chromium` package) for the tests that look at pages in a real browser: the DOM
after the page's scripts ran (`--dump-dom`) with the console messages, and screenshots. Tests skip, saying so,
where Chromium is not installed."""
from __future__ import annotations

import html
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("ILF_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


def require_chromium() -> Path:
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium) to check the "
                    "pages in a real browser (CI does)")
    return CHROMIUM


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="ilf-chromium-") as profile:  # a fresh profile every time
        return subprocess.run([str(require_chromium()), *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


def console_lines(stderr: str) -> list[str]:
    """The page's console messages (Chromium logs each, whatever its level, as a CONSOLE line)."""
    return [line for line in stderr.splitlines() if re.search(r":CONSOLE[(:]", line)]


def dump_dom(url: str, budget_ms: int = 60000, timeout: int = 180) -> tuple[str, list[str]]:
    """The DOM after the page ran for up to `budget_ms` of virtual time, and its console messages."""
    res = _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout, console_lines(res.stderr)


def screenshot(url: str, path: Path, size: tuple[int, int] = (1400, 900), budget_ms: int = 10000) -> Path:
    """A PNG of the page after it ran for `budget_ms` of virtual time."""
    res = _run([f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}",
                f"--screenshot={path}", url], 180)
    assert res.returncode == 0 and Path(path).is_file(), res.stderr[-3000:]
    return Path(path)


def check_result(dom: str, element: str = "ilf-check") -> dict:
    """The JSON a check script wrote into <pre id=`element`>."""
    m = re.search(rf'<pre id="{element}">(.*?)</pre>', dom, re.S)
    assert m, f"the check script wrote no result (it did not run, or the page broke):\n{dom[-3000:]}"
    return json.loads(html.unescape(m.group(1)))

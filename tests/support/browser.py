"""Headless Chromium (Debian's `chromium`, driven by Playwright with `executable_path`: Playwright's own browser
download is unreachable here) as a person's browser on a client machine: it trusts the front door CA the way a
Linux client installs it (an NSS database in its HOME) and resolves the tenants' names to this host's door."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/lib/chromium/chromium")


def browser_home(ca: Path, directory: Path) -> Path:
    """A HOME whose NSS database trusts the front door CA: how the CA `appliance frontdoor ca` prints is
    installed for Chromium on a Linux client (certutil comes with libnss3-tools)."""
    home = directory / "browser-home"
    database = home / ".pki" / "nssdb"
    if not database.is_dir():
        database.mkdir(parents=True)
        subprocess.run(["certutil", "-d", f"sql:{database}", "-N", "--empty-password"], check=True,
                       capture_output=True)
        subprocess.run(["certutil", "-d", f"sql:{database}", "-A", "-t", "C,,", "-n", "appliance front door",
                        "-i", str(ca)], check=True, capture_output=True)
    return home


@contextmanager
def chromium(ca: Path, directory: Path, hostnames: list[str]) -> Iterator[Any]:
    """A browser context (Playwright) trusting `ca`, with `hostnames` resolved to this host's front door."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "Debian's chromium is not installed (.ci/run installs it)"
    rules = ", ".join(f"MAP {name} 127.0.0.1" for name in hostnames)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[f"--host-resolver-rules={rules}"],
                                             env={**os.environ, "HOME": str(browser_home(ca, directory))})
        try:
            yield browser.new_context()
        finally:
            browser.close()

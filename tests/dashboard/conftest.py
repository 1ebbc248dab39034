"""A real browser for the dashboard tests: Playwright (Python) driving Debian's chromium,
headless, against pytest-django's live server on the test database. Chromium comes from
apt when it is missing (the machines have no other browser); Playwright does not download
browsers of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = "/usr/bin/chromium"
# Flags these machines need (see the env notes): no sandbox as root, no background network
# (the closed network refuses Chromium's own connections), a fresh profile.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


def ensure_chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        pytest.fail("Chromium is missing and apt-get is not there to install it (Debian package `chromium`)")
    subprocess.run([apt_get, "install", "-y", "-q", "chromium"], check=True, capture_output=True)
    return CHROMIUM


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    # Playwright's sync API keeps an event loop running in this thread; Django refuses
    # database access from such a thread unless told it is fine (it is: the loop only drives
    # the browser, and the tests' own queries run synchronously).
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
            yield b
            b.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser: Any, live_server: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 900}, base_url=live_server.url)
    p = context.new_page()
    p.set_default_timeout(15_000)
    yield p
    context.close()


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


PASSWORD = "correct horse battery staple"  # tests.factories.UserFactory's


def login(page: Any, username: str, password: str = PASSWORD) -> None:
    page.goto("/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/")


# ClickHouse table fixture for the log search page.
from tests.logs.conftest import ch_table  # noqa: E402, F401

"""Fixtures of the portal's tests: people (an organization, a user, a membership), and
a real browser (Debian's Chromium driven by Playwright) that reaches nothing but the
live server.

The browser is the system's Chromium (``/usr/bin/chromium``; the Makefile's ``test``
target installs it when missing), never one that ``playwright install`` downloads:
the suite runs offline. Every context aborts requests to any host but the live
server's.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.test.utils import override_settings

from core import services
from core.models import Membership, Organization

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# Screenshots of every page, each size and colour scheme (git-ignored; a few are
# copied to docs/screenshots/ for the README).
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
PASSWORD = "correct horse battery staple"


@dataclass
class Person:
    user: object
    membership: Membership
    email: str
    password: str = PASSWORD

    @property
    def organization(self) -> Organization:
        return self.membership.organization


@pytest.fixture
def person(db: None) -> Callable[..., Person]:
    """A person with a new organization of ``kind``, as ``role``."""
    count = 0

    def make(kind: str = "buyer", role: str = "admin", org: Organization | None = None) -> Person:
        nonlocal count
        count += 1
        email = f"person{count}-{kind}@example.com"
        if org is None:
            membership = services.org_sign_up(
                email=email, password=PASSWORD, organization_name=f"Org {count} {kind}", kind=kind
            )
            if role != "admin":
                membership.role = role
                membership.save(update_fields=["role"])
        else:
            from django.contrib.auth import get_user_model

            user = get_user_model().objects.create_user(
                username=email, email=email, password=PASSWORD
            )
            membership = services.membership_create(user=user, organization=org, role=role)
        return Person(user=membership.user, membership=membership, email=email)

    return make


# --- the browser ---------------------------------------------------------------


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    """pytest-playwright launches Debian's Chromium, with these flags."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(
            "no Chromium at /usr/bin/chromium: `make test` installs it "
            "(apt-get install chromium fonts-dejavu-core)"
        )
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict) -> dict:
    return {**browser_context_args, "viewport": {"width": 1280, "height": 800}}


def only_local(route, request) -> None:
    """Requests for any host but this machine are aborted, so a page that would load
    something from outside fails its test instead of leaking or hanging."""
    if urlsplit(request.url).hostname in LOCAL_HOSTS:
        route.continue_()
    else:
        route.abort("blockedbyclient")


@pytest.fixture
def _browser_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Playwright's synchronous API runs an event loop in this thread; the test's own
    # database reads are still synchronous, between its calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    # The live server speaks plain http: cookies without the Secure flag.
    with override_settings(SESSION_COOKIE_SECURE=False, CSRF_COOKIE_SECURE=False):
        yield


@pytest.fixture
def context(_browser_env: None, context):  # noqa: F811  (pytest-playwright's, locked down)
    context.route("**/*", only_local)
    return context


@pytest.fixture
def local_context(_browser_env: None, new_context) -> Callable[..., object]:
    """A new browser context with ``kwargs`` (viewport, color_scheme), local-only."""

    def make(**kwargs: object):
        created = new_context(**kwargs)
        created.route("**/*", only_local)
        return created

    return make


def sign_in(page, live_server, who: Person) -> None:
    page.goto(f"{live_server.url}/sign-in/")
    page.get_by_label("Email").fill(who.email)
    page.get_by_label("Password").fill(who.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()

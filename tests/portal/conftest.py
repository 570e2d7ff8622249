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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.test.utils import override_settings

from core import services
from core.models import Membership, Organization

# localstripe (a subprocess, once per session) and ``stripe_on``, the settings that
# point payments at it, exactly as the payments tests have them: the checkout journey
# makes its PaymentIntents there.
from tests.payments.conftest import localstripe, stripe_on  # noqa: F401

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


@pytest.fixture(autouse=True)
def _fast_password_hashing() -> Iterator[None]:
    """Every sign-up, invitation and sign-in hashes a password; production's hasher
    is slow on purpose, which these tests need not pay for each time."""
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


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
#
# Playwright's synchronous API runs an event loop in this thread while it is started,
# and Django refuses database calls from a thread with a running loop. So the browser
# lives for one test module at a time (started after the test database exists, stopped
# at the module's end, so no later test in the run inherits the loop), and the
# module's own database reads are allowed meanwhile (DJANGO_ALLOW_ASYNC_UNSAFE: they
# run between the browser's calls, never inside them). pytest-playwright's fixtures
# are session-wide, which would leave the loop running under every later test.


@pytest.fixture(scope="module")
def browser(django_db_setup: None, django_db_blocker) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `make test` installs it "
            "(apt-get install chromium fonts-dejavu-core)"
        )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield launched
            launched.close()


def only_local(route, request) -> None:
    """Requests for any host but this machine are aborted, so a page that would load
    something from outside fails its test instead of leaking or hanging."""
    if urlsplit(request.url).hostname in LOCAL_HOSTS:
        route.continue_()
    else:
        route.abort("blockedbyclient")


@pytest.fixture
def new_context(browser) -> Iterator[Callable[..., object]]:
    """Browser contexts (``viewport``, ``color_scheme``, …) that reach only this
    machine, closed after the test. The live server speaks plain http, so its cookies
    go without the Secure flag meanwhile."""
    made: list = []

    def make(**kwargs: object):
        options = {"viewport": {"width": 1280, "height": 800}, **kwargs}
        context = browser.new_context(**options)
        context.set_default_timeout(10_000)
        context.route("**/*", only_local)
        made.append(context)
        return context

    with override_settings(SESSION_COOKIE_SECURE=False, CSRF_COOKIE_SECURE=False):
        yield make
    for context in made:
        context.close()


@pytest.fixture
def page(new_context):
    return new_context().new_page()


def sign_in(page, live_server, who: Person) -> None:
    page.goto(f"{live_server.url}/sign-in/")
    page.get_by_label("Email").fill(who.email)
    page.get_by_label("Password").fill(who.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


# --- accessibility -----------------------------------------------------------------

WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22a", "wcag22aa"]
# Every violation in full, and of the rules that passed (or could not decide, or did
# not apply) one node each rather than every node: what the checks read, at a
# quarter less of axe's time a page (axe-core's ``resultTypes``).
AXE_OPTIONS = {"runOnly": {"type": "tag", "values": WCAG}, "resultTypes": ["violations"]}


def accessible(page, errors: list[str] | None = None) -> None:
    """The page as it stands passes axe-core's WCAG 2.2 A and AA rules, and (given the
    page's console errors as collected) logged no error."""
    results = Axe().run(page, options=AXE_OPTIONS)
    assert results.violations_count == 0, results.generate_report()
    assert not errors, errors

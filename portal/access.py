"""Who is looking at a page: the signed-in person's membership, and the checks every
page makes before it reads or writes anything.

A page is wrapped in ``member_page``: signed-out visitors go to sign-in; the member's
organization is the one chosen in the session (``ORGANIZATION_SESSION_KEY``) or,
when none is, their oldest membership (``portal.views.account.organization_switch``
changes the choice). ``request.member`` then holds the membership with its
organization, and every read is scoped to it. The services' own errors
become pages: ``NotFound`` a 404 (another organization's id is as good as absent),
``Forbidden`` a 403.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest
from django.http.response import HttpResponseBase

from core import selectors as tenancy
from core.errors import Forbidden, NotFound
from core.models import Membership, Organization
from core.tenancy import Caller

ORGANIZATION_SESSION_KEY = "portal_organization_id"
ADMIN = Membership.Role.ADMIN

View = Callable[..., HttpResponseBase]  # a page, or a file (FileResponse)


def current_membership(request: HttpRequest) -> Membership | None:
    """The membership the session chose, else the oldest. Every membership of the
    person is read in the one query (few people are in many organizations) and kept
    as ``request.memberships`` for the organization switcher in the page header."""
    memberships = list(tenancy.memberships_for_user(user=request.user))
    request.memberships = memberships  # type: ignore[attr-defined]
    chosen = request.session.get(ORGANIZATION_SESSION_KEY)
    for membership in memberships:
        if membership.organization_id == chosen:
            return membership
    return memberships[0] if memberships else None


def member_page(
    *, roles: Iterable[str] | None = None, kinds: Iterable[str] | None = None
) -> Callable[[View], View]:
    """Signed in, a member, of a role in ``roles`` (all when None), of an organization
    whose kind is in ``kinds`` (all when None). A page for another kind of organization
    (a provider opening the buyer console) answers 404: it does not exist for them."""
    allowed_roles = frozenset(roles) if roles is not None else None
    allowed_kinds = frozenset(kinds) if kinds is not None else None

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            membership = current_membership(request)
            if membership is None:
                raise PermissionDenied("you are not a member of any organization")
            if allowed_kinds is not None and membership.organization.kind not in allowed_kinds:
                raise Http404("this page is not part of your organization's portal")
            if allowed_roles is not None and membership.role not in allowed_roles:
                raise PermissionDenied(
                    f"this needs the {' or '.join(sorted(allowed_roles))} role; "
                    f"yours is {membership.role}"
                )
            request.member = membership  # type: ignore[attr-defined]
            try:
                return view(request, *args, **kwargs)
            except NotFound as error:
                raise Http404(error.message) from error
            except Forbidden as error:
                raise PermissionDenied(error.message) from error

        return wrapper

    return decorate


BUYER_KINDS = (Organization.Kind.BUYER, Organization.Kind.BOTH)
# Who may start, change and stop a buyer's work (jobs, orders, files, deployments), as
# in the API (core.permissions.IsBuyerOperator); finance staff read.
OPERATORS = (Membership.Role.ADMIN, Membership.Role.MEMBER)
PROVIDER_KINDS = (Organization.Kind.PROVIDER, Organization.Kind.BOTH)

# The operator's finance staff (``Caller.is_platform_finance``): the finance pages.
FINANCE_ROLES = (Membership.Role.FINANCE, Membership.Role.ADMIN)


def finance_page(view: View) -> View:
    """A page of ``/finance/``: the operator's finance staff and admins only. Another
    organization's members find no such page (404, as a provider finds no buyer
    console); the operator's other members are refused (403)."""

    @wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        organization = request.member.organization  # type: ignore[attr-defined]
        if not organization.is_operator:
            raise Http404("the finance pages are the operator's")
        if request.member.role not in FINANCE_ROLES:  # type: ignore[attr-defined]
            raise PermissionDenied(
                f"the finance pages need the finance or admin role; yours is {request.member.role}"  # type: ignore[attr-defined]
            )
        return view(request, *args, **kwargs)

    return member_page()(checked)


def member_caller(request: HttpRequest) -> Caller:
    """The signed-in member as the services' ``Caller`` (for the operator's finance
    staff, one that reads every organization's books)."""
    membership = request.member  # type: ignore[attr-defined]
    return Caller(
        organization=membership.organization, role=membership.role, user_id=request.user.pk
    )


def member_actor(request: HttpRequest) -> str:
    """Who did it, as services record an actor: the signed-in person's email."""
    return getattr(request.user, "email", "") or f"user {request.user.pk}"

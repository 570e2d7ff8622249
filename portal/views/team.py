"""The team: who is in the organization and with which role. Admins invite people by
email, change roles and remove members; everyone sees the list.

An invitation adds the person at once (core.services.member_invite). Someone without
an account gets one with no usable password and a mailed link to choose it: Django's
password-reset token, which expires (PASSWORD_RESET_TIMEOUT), works once and needs no
table of pending invitations. Re-sending is asking for a password reset."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.tokens import default_token_generator
from django.core.mail import send_mail
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django.views.decorators.http import require_http_methods, require_POST

from core import selectors as tenancy
from core import services as tenancy_writes
from core.errors import ApplicationError
from portal.access import ADMIN, member_page
from portal.forms import InviteForm, RoleForm, add_service_error
from portal.views.paging import page_of


def _team_page(request: HttpRequest, invite_form: InviteForm, *, status: int = 200) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    members = tenancy.memberships_for_org(organization=organization)
    return render(
        request,
        "portal/everyone/team.html",
        {"page": page_of(request, members), "invite_form": invite_form, "role_form": RoleForm()},
        status=status,
    )


@require_http_methods(["GET"])
@member_page()
def team(request: HttpRequest) -> HttpResponse:
    return _team_page(request, InviteForm())


@require_POST
@member_page(roles=[ADMIN])
def member_invite(request: HttpRequest) -> HttpResponse:
    form = InviteForm(request.POST)
    if form.is_valid():
        organization = request.member.organization  # type: ignore[attr-defined]
        try:
            invitation = tenancy_writes.member_invite(
                organization=organization,
                email=form.cleaned_data["email"],
                role=form.cleaned_data["role"],
            )
        except ApplicationError as error:
            add_service_error(form, error)
        else:
            _mail_invitation(request, invitation)
            user = invitation.membership.user
            messages.success(request, f"Invited {user.email} as {invitation.membership.role}.")
            return redirect("portal:team")
    return _team_page(request, form, status=400)


def _mail_invitation(request: HttpRequest, invitation: tenancy_writes.Invitation) -> None:
    """Mailed after the invitation committed (slow I/O stays outside transactions)."""
    user = invitation.membership.user
    context = {
        "organization": invitation.membership.organization,
        "inviter": request.user,
        "role": invitation.membership.role,
        "sign_in_url": request.build_absolute_uri(reverse("portal:sign-in")),
        "set_password_url": None,
    }
    if invitation.new_account:
        path = reverse(
            "portal:password-reset-confirm",
            kwargs={
                "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
                "token": default_token_generator.make_token(user),
            },
        )
        context["set_password_url"] = request.build_absolute_uri(path)
    send_mail(
        subject=f"You have been added to {invitation.membership.organization.name} on Tandem",
        message=render_to_string("portal/email/invitation.txt", context),
        from_email=None,
        recipient_list=[user.email],
    )


@require_POST
@member_page(roles=[ADMIN])
def member_role_change(request: HttpRequest, membership_id: int) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    membership = tenancy.membership_get(organization=organization, membership_id=membership_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Role: {form.errors['role'][0]}")
        return redirect("portal:team")
    try:
        tenancy_writes.membership_role_change(membership=membership, role=form.cleaned_data["role"])
    except ApplicationError as error:
        messages.error(request, f"{membership.user.email}: {error.message}")
    else:
        messages.success(request, f"{membership.user.email} is now {membership.role}.")
    return redirect("portal:team")


@require_POST
@member_page(roles=[ADMIN])
def member_remove(request: HttpRequest, membership_id: int) -> HttpResponse:
    organization = request.member.organization  # type: ignore[attr-defined]
    membership = tenancy.membership_get(organization=organization, membership_id=membership_id)
    try:
        tenancy_writes.membership_remove(membership=membership)
    except ApplicationError as error:
        messages.error(request, f"{membership.user.email}: {error.message}")
    else:
        messages.success(request, f"Removed {membership.user.email} from {organization.name}.")
    return redirect("portal:team")

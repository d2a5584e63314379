"""Admin actions that answer 403, not a shrug, to a user who may not run them."""

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.urls import reverse
from django.utils.html import format_html


def job_link(job_id, empty: str = "-"):
    """A link to a job's admin page, or `empty` when there is no job."""
    if job_id is None:
        return empty
    return format_html('<a href="{}">{}</a>', reverse("admin:jobs_job_change", args=[job_id]), job_id)


class StrictActionsMixin:
    """Django's changelist quietly says "No action selected" when a POST names an action
    the user may not run; an operator's tooling (and a test) deserves a 403.

    Actions run only on POST (with Django's CSRF check); a GET never runs one.
    """

    def changelist_view(self, request, extra_context=None):
        action = request.POST.get("action") if request.method == "POST" else None
        if action and action not in self.get_actions(request):
            raise PermissionDenied(f"You may not run the action {action!r} here.")
        return super().changelist_view(request, extra_context)

    def report_outcome(self, request, done: int, total: int, done_message: str, skipped_message: str) -> None:
        """Says how many of the selected rows the action changed, and why the rest were skipped.

        The messages take `{n}`: "{n} job(s) retried.", "{n} skipped: they were not open.".
        """
        if done:
            self.message_user(request, done_message.format(n=done), messages.SUCCESS)
        if total - done:
            self.message_user(request, skipped_message.format(n=total - done), messages.WARNING)


class ReadOnlyAdmin:
    """An audit record's admin: it can be read, never added, changed or deleted."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

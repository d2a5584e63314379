"""Admin actions that answer 403, not a shrug, to a user who may not run them."""

from django.core.exceptions import PermissionDenied


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

"""Admin for outgoing emails: list, filter, preview, resend, send a test email."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html

from emails import delivery, services
from emails.models import OutgoingEmail
from jobs.admin_actions import StrictActionsMixin, job_link


@admin.register(OutgoingEmail)
class OutgoingEmailAdmin(StrictActionsMixin, admin.ModelAdmin):
    list_display = ["subject", "recipients", "template", "status", "attempts", "created_at", "sent_at"]
    list_filter = ["status", "template", "created_at"]
    search_fields = ["subject", "message_id"]
    search_help_text = "Subject, Message-ID, or an exact recipient address."
    date_hierarchy = "created_at"
    actions = ["resend"]
    change_list_template = "admin/emails/outgoingemail/change_list.html"
    fields = [
        "to", "cc", "reply_to", "subject", "template", "status", "attempts", "last_error",
        "message_id", "key", "job_link", "attachments", "created_at", "sent_at", "preview",
    ]  # fmt: skip
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(
            Q(subject__icontains=term)
            | Q(message_id__icontains=term)
            | Q(to__contains=[term])
            | Q(cc__contains=[term])
        ), False

    @admin.display(description="To")
    def recipients(self, obj):
        return ", ".join(obj.to)

    @admin.display(description="Job")
    def job_link(self, obj):
        return job_link(obj.job_id)

    @admin.display(description="Preview")
    def preview(self, obj):
        text, html = delivery.render_bodies(obj)
        return format_html(
            '<p><strong>Plain text</strong></p><pre style="white-space:pre-wrap">{}</pre>'
            "<p><strong>HTML</strong></p>"
            '<iframe sandbox srcdoc="{}" style="width:100%;height:16rem;border:1px solid #ccc"></iframe>',
            text,
            html,
        )

    @admin.action(description="Resend (as a new email)", permissions=["change"])
    def resend(self, request, queryset):
        with transaction.atomic():
            copies = [services.resend(email) for email in queryset]
        self.message_user(request, f"{len(copies)} email(s) queued again as new emails.", messages.SUCCESS)

    def get_urls(self):
        return [
            path(
                "send-test/",
                self.admin_site.admin_view(self.send_test_view),
                name="emails_outgoingemail_send_test",
            ),
            *super().get_urls(),
        ]

    def send_test_view(self, request):
        """Queues a test email to an address (GET shows the form; only POST sends)."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        form = SendTestEmailForm(request.POST or None, initial={"to": request.user.email})
        if request.method == "POST" and form.is_valid():
            try:
                services.send_test_email(form.cleaned_data["to"], request.user.get_username())
            except services.EmailInputError as exc:
                form.add_error("to", str(exc))
            else:
                self.message_user(
                    request, f"Test email queued to {form.cleaned_data['to']}.", messages.SUCCESS
                )
                return redirect("admin:emails_outgoingemail_changelist")
        context = {
            **self.admin_site.each_context(request),
            "title": "Send a test email",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/emails/outgoingemail/send_test.html", context)


class SendTestEmailForm(forms.Form):
    to = forms.EmailField(label="Send to")

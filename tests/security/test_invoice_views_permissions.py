"""The invoice views outside the admin need the permissions the admin needs.

Requesting a PDF (and emailing it to the customer) needs "change invoice", as the
admin's "Generate PDF" and "Generate PDF and email it" actions do. The cached
invoice lists need "view invoice" and "view customer", checked before the cache is read.
"""

import json
import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from invoices.tests.factories import make_invoice
from jobs.models import Job

# Not transactional: nothing commits, so no job is published and no worker is needed.
pytestmark = pytest.mark.django_db


def staff_client(*codenames: str) -> Client:
    user = User.objects.create_user(f"staff-{uuid.uuid4().hex[:6]}", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("codenames", [(), ("view_invoice", "view_customer")], ids=["none", "view-only"])
def test_requesting_or_emailing_a_pdf_needs_the_change_invoice_permission(codenames):
    invoice = make_invoice(lines=1)
    jobs_before = Job.objects.count()

    response = staff_client(*codenames).post(
        reverse("invoices:request-invoice-pdf", args=[invoice.pk]), {"email": "1"}
    )

    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    assert "change invoice" in json.loads(response.content)["error"]
    assert Job.objects.count() == jobs_before, "no PDF job, so no email to the customer"


def test_staff_with_change_invoice_requests_the_pdf_and_its_email():
    invoice = make_invoice(lines=1)

    response = staff_client("change_invoice").post(
        reverse("invoices:request-invoice-pdf", args=[invoice.pk]), {"email": "1"}
    )

    assert response.status_code == 202
    job = Job.objects.get(pk=json.loads(response.content)["job"])
    assert job.kwargs["email_to_customer"] is True


def test_without_the_permission_an_unknown_invoice_is_a_403_not_a_404():
    response = staff_client("view_invoice").post(reverse("invoices:request-invoice-pdf", args=[10**9]))
    assert response.status_code == 403


LISTS = ["invoices:customer-invoices", "invoices:customer-invoices-json"]


@pytest.mark.parametrize("name", LISTS)
def test_cached_invoice_lists_need_view_invoice_even_when_the_cache_holds_the_page(name):
    invoice = make_invoice(lines=1)
    url = reverse(name, args=[invoice.customer_id])
    allowed = staff_client("view_invoice", "view_customer")
    allowed.get(url)
    assert allowed.get(url)["X-Cache"] == "HIT", "the page is in Redis"

    for codenames in [(), ("view_customer",), ("view_invoice",)]:
        response = staff_client(*codenames).get(url)
        assert response.status_code == 403, codenames
        assert "X-Cache" not in response, "refused before the cache was read"
        assert invoice.number not in response.content.decode()


@pytest.mark.parametrize("name", LISTS)
def test_without_the_permission_an_unknown_customer_is_a_403_not_a_404(name):
    assert staff_client("view_customer").get(reverse(name, args=[10**9])).status_code == 403


def test_the_json_list_refuses_with_a_json_error():
    invoice = make_invoice(lines=1)
    response = staff_client("view_customer").get(
        reverse("invoices:customer-invoices-json", args=[invoice.customer_id])
    )
    assert response.status_code == 403
    assert "view invoice" in json.loads(response.content)["error"]

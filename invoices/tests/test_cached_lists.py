"""Cached invoice lists: served from Redis, invalidated by a job, never by the request."""

import json

import pytest
from django.urls import reverse

from invoices.models import InvoiceLine
from invoices.tests.factories import make_invoice, make_invoice_reader
from jobs.models import Job, JobState
from jobs.testing import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff_client(client):
    client.force_login(make_invoice_reader())
    return client


def get_json(client, customer_id):
    response = client.get(reverse("invoices:customer-invoices-json", args=[customer_id]))
    assert response.status_code == 200
    return response["X-Cache"], json.loads(response.content)


def invalidations_done(customer_id) -> bool:
    jobs = Job.objects.filter(
        task_name="jobs.invalidate_cache", kwargs__namespace=f"customer-invoices:{customer_id}"
    )
    return jobs.exists() and not jobs.exclude(state=JobState.SUCCEEDED).exists()


def test_cached_response_is_served_and_an_edit_shows_once_the_job_ran(worker, staff_client):
    invoice = make_invoice(lines=1)
    customer_id = invoice.customer_id
    wait_for(lambda: invalidations_done(customer_id), message="creation's invalidation")

    assert get_json(staff_client, customer_id)[0] == "MISS"
    status, body = get_json(staff_client, customer_id)
    assert status == "HIT"
    assert body["invoices"][0]["total"] == "12.01"

    InvoiceLine.objects.create(invoice=invoice, position=1, description="More", unit_price="100.00")
    wait_for(lambda: invalidations_done(customer_id), message="the edit's invalidation")

    status, body = get_json(staff_client, customer_id)
    assert status == "MISS"
    assert body["invoices"][0]["total"] == "132.01"
    page = staff_client.get(reverse("invoices:customer-invoices", args=[customer_id])).content.decode()
    assert "132.01 EUR" in page and "Zofia Łukasiewicz-Müller" in page


def test_with_the_worker_stopped_the_stale_list_is_served_until_a_worker_applies_the_invalidation(
    own_worker, staff_client
):
    own_worker.start()
    invoice = make_invoice(lines=1)
    customer_id = invoice.customer_id
    wait_for(lambda: invalidations_done(customer_id), message="creation's invalidation")
    get_json(staff_client, customer_id)
    own_worker.stop()

    InvoiceLine.objects.create(invoice=invoice, position=1, description="More", unit_price="100.00")

    pending = Job.objects.filter(task_name="jobs.invalidate_cache", state=JobState.QUEUED)
    assert pending.count() == 1, "the invalidation waits in the queue"
    status, body = get_json(staff_client, customer_id)
    assert status == "HIT" and body["invoices"][0]["total"] == "12.01", "stale, not deleted by the request"

    own_worker.start()
    wait_for(lambda: invalidations_done(customer_id), message="the invalidation after the worker started")
    status, body = get_json(staff_client, customer_id)
    assert status == "MISS" and body["invoices"][0]["total"] == "132.01"


def test_cached_lists_need_staff(client):
    invoice = make_invoice(lines=1)
    response = client.get(reverse("invoices:customer-invoices-json", args=[invoice.customer_id]))
    assert response.status_code == 302

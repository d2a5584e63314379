"""A customer's invoice list, as a page and as JSON, cached in Redis; an invoice's PDF on request.

The views only read and fill the cache; they never delete from it. Changes reach the
cache through jobs.invalidate_cache (see invoices.receivers), which bumps the
customer's cache namespace.

Each view needs the model permissions its admin counterpart needs, checked before the
cache is read or the object looked up (a refused user learns nothing, not even whether
the customer exists): the lists need "view invoice" and "view customer"; a PDF, with
or without its email, needs "change invoice", as the "Generate PDF" actions do.
"""

import json
import logging
from functools import wraps

from django.contrib.admin.views.decorators import staff_member_required
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET, require_POST

from invoices import selectors, services
from invoices.cached_lists import invoice_list_namespace
from invoices.models import Customer, Invoice
from jobs.cache import namespaced_key

logger = logging.getLogger(__name__)


def _cached(namespace: str, key: str, build) -> tuple[str, str]:
    """Returns (body, "HIT"|"MISS"|"BYPASS"); with Redis down, builds the page uncached."""
    try:
        cache_key = namespaced_key(namespace, key)
        body = cache.get(cache_key)
    except Exception as exc:  # noqa: BLE001 - a cache outage must not break the page
        logger.warning("cache unavailable (%s); serving %s uncached", exc.__class__.__name__, namespace)
        return build(), "BYPASS"
    if body is not None:
        return body, "HIT"
    body = build()
    try:
        cache.set(cache_key, body)
    except Exception as exc:  # noqa: BLE001
        logger.warning("cache unavailable (%s); %s not cached", exc.__class__.__name__, namespace)
    return body, "MISS"


def _staff_with_permissions(*perms: str, refusal: str, json_error: bool = False):
    """Staff only (others go to the admin login); a staff member without `perms` gets a 403."""

    def decorator(view):
        @wraps(view)
        def checked(request, *args, **kwargs):
            if not request.user.has_perms(perms):
                if json_error:
                    return JsonResponse({"error": refusal}, status=403)
                raise PermissionDenied(refusal)
            return view(request, *args, **kwargs)

        return staff_member_required(checked)

    return decorator


_LIST_REFUSAL = (
    "Invoice lists need the “Can view invoice” and “Can view customer” permissions; "
    "ask an administrator for them."
)
_PDF_REFUSAL = (
    "Generating or emailing an invoice PDF needs the “Can change invoice” permission, as the "
    "admin's “Generate PDF” actions do; ask an administrator for it."
)


@_staff_with_permissions("invoices.view_invoice", "invoices.view_customer", refusal=_LIST_REFUSAL)
@require_GET
def customer_invoices(request, customer_id: int):
    customer = get_object_or_404(Customer, pk=customer_id)

    def build() -> str:
        summary = selectors.customer_invoice_summary(customer.id)
        return render_to_string("invoices/customer_invoices.html", {"customer": customer, **summary})

    body, status = _cached(invoice_list_namespace(customer.id), "html", build)
    response = HttpResponse(body)
    response["X-Cache"] = status
    return response


@_staff_with_permissions(
    "invoices.view_invoice", "invoices.view_customer", refusal=_LIST_REFUSAL, json_error=True
)
@require_GET
def customer_invoices_json(request, customer_id: int):
    if not Customer.objects.filter(pk=customer_id).exists():
        raise Http404("No such customer.")

    def build() -> str:
        return json.dumps(selectors.customer_invoice_summary(customer_id))

    body, status = _cached(invoice_list_namespace(customer_id), "json", build)
    response = HttpResponse(body, content_type="application/json")
    response["X-Cache"] = status
    return response


@_staff_with_permissions("invoices.change_invoice", refusal=_PDF_REFUSAL, json_error=True)
@require_POST
def request_invoice_pdf(request, invoice_id: int):
    """POST /api/invoices/<id>/pdf (`email=1` to email it to the customer): 202 with the job.

    Answers at once whatever the broker's state: the job is recorded in PostgreSQL
    and published after commit, or later by the relay.
    """
    invoice = get_object_or_404(Invoice, pk=invoice_id)
    job = services.request_pdf(invoice, email=request.POST.get("email") == "1")
    return JsonResponse({"job": str(job.id), "state": job.state}, status=202)

"""A customer's cached invoice lists: the cache namespace they live under, and their
invalidation.

The views fill the cache (invoices.views). A write never empties it in the request:
invoices.services enqueues an invalidation job, and the job drops the lists here.
"""

from jobs import cache as job_cache


def invoice_list_namespace(customer_id: int) -> str:
    return f"customer-invoices:{customer_id}"


def invalidate_invoice_lists(customer_id: int) -> None:
    """Invalidates the customer's cached invoice lists now (in a job, never in a request)."""
    job_cache.invalidate(namespace=invoice_list_namespace(customer_id))

from django.urls import path

from invoices import views

app_name = "invoices"

urlpatterns = [
    path("customers/<int:customer_id>/invoices/", views.customer_invoices, name="customer-invoices"),
    path(
        "api/customers/<int:customer_id>/invoices.json",
        views.customer_invoices_json,
        name="customer-invoices-json",
    ),
    path("api/invoices/<int:invoice_id>/pdf", views.request_invoice_pdf, name="request-invoice-pdf"),
]

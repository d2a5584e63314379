from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path

from jobs.metrics import metrics_view


def health(request):
    return JsonResponse({"ok": True})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", health, name="health"),
    path("metrics", metrics_view, name="metrics"),
    path("api/", include("jobs.urls")),
    path("", include("invoices.urls")),
]

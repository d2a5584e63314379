"""A URLconf whose only view fails, to look at the 500 page a user would get."""

from django.urls import path


def boom(request):
    raise RuntimeError("something failed while handling this request")


urlpatterns = [path("boom/", boom)]

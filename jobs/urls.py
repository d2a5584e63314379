"""The platform's URLs a project includes (project/urls.py): the job API."""

from django.urls import path

from jobs.views import job_detail

app_name = "jobs"
urlpatterns = [
    path("jobs/<uuid:job_id>", job_detail, name="job_detail"),
]

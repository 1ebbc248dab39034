from django.urls import path

from logs import apis

urlpatterns = [
    path("logs/", apis.LogSearchApi.as_view(), name="log-list"),
    path("logs/stats/", apis.LogStatsApi.as_view(), name="log-stats"),
    path("jobs/<uuid:job_id>/logs/", apis.JobLogsApi.as_view(), name="job-logs"),
]

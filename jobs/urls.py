from django.urls import path

from jobs import apis

urlpatterns = [
    path("auth/token/", apis.TokenObtainApi.as_view(), name="auth-token"),
    path("jobs/", apis.JobListCreateApi.as_view(), name="job-list"),
    path("jobs/bulk/", apis.JobBulkCreateApi.as_view(), name="job-bulk"),
    path("jobs/stats/", apis.JobStatsApi.as_view(), name="job-stats"),
    path("jobs/bulk-actions/", apis.JobBulkActionApi.as_view(), name="job-bulk-action"),
    path("jobs/<uuid:job_id>/", apis.JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<uuid:job_id>/cancel/", apis.JobCancelApi.as_view(), name="job-cancel"),
    path("jobs/<uuid:job_id>/retry/", apis.JobRetryApi.as_view(), name="job-retry"),
    path("batches/", apis.BatchListCreateApi.as_view(), name="batch-list"),
    path("batches/<uuid:batch_id>/", apis.BatchDetailApi.as_view(), name="batch-detail"),
    path("batches/<uuid:batch_id>/jobs/", apis.BatchJobsApi.as_view(), name="batch-jobs"),
    path("batches/<uuid:batch_id>/close/", apis.BatchCloseApi.as_view(), name="batch-close"),
    path("batches/<uuid:batch_id>/cancel/", apis.BatchCancelApi.as_view(), name="batch-cancel"),
    path("rate-limits/", apis.RateLimitListCreateApi.as_view(), name="rate-limit-list"),
    path("rate-limits/<int:limit_id>/", apis.RateLimitDetailApi.as_view(), name="rate-limit-detail"),
    path("schedules/", apis.ScheduleListCreateApi.as_view(), name="schedule-list"),
    path("schedules/<uuid:schedule_id>/", apis.ScheduleDetailApi.as_view(), name="schedule-detail"),
    path("audit/", apis.AuditListApi.as_view(), name="audit-list"),
]

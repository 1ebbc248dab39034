from django.contrib.auth import views as auth_views
from django.urls import path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("overview/panel/", views.overview_panel, name="overview-panel"),
    path("login/", auth_views.LoginView.as_view(template_name="registration/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="/login/"), name="logout"),
    path("jobs/", views.job_list, name="jobs"),
    path("jobs/bulk/", views.job_bulk, name="jobs-bulk"),
    path("jobs/bulk-action/", views.job_bulk_action, name="jobs-bulk-action"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job"),
    path("jobs/<uuid:job_id>/panel/", views.job_panel, name="job-panel"),
    path("jobs/<uuid:job_id>/logs/", views.job_logs, name="job-logs"),
    path("jobs/<uuid:job_id>/<str:action>/", views.job_action, name="job-action"),
    path("batches/", views.batch_list, name="batches"),
    path("batches/<uuid:batch_id>/", views.batch_detail, name="batch"),
    path("batches/<uuid:batch_id>/panel/", views.batch_panel, name="batch-panel"),
    path("batches/<uuid:batch_id>/cancel/", views.batch_cancel, name="batch-cancel"),
    path("workflows/", views.workflow_list, name="workflows"),
    path("workflows/<uuid:workflow_id>/", views.workflow_detail, name="workflow"),
    path("workflows/<uuid:workflow_id>/panel/", views.workflow_panel, name="workflow-panel"),
    path("workflows/<uuid:workflow_id>/cancel/", views.workflow_cancel, name="workflow-cancel"),
    path("workflows/<uuid:workflow_id>/approvals/<str:task_id>/", views.workflow_decide, name="workflow-decide"),
    path("logs/", views.log_search, name="logs"),
    path("schedules/", views.schedule_list, name="schedules"),
    path("audit/", views.audit_list, name="audit"),
    path("schedules/<uuid:schedule_id>/toggle/", views.schedule_toggle, name="schedule-toggle"),
]

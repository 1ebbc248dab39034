from django.urls import path

from workflows import apis

urlpatterns = [
    path("workflows/", apis.WorkflowListCreateApi.as_view(), name="workflow-list"),
    path("workflows/<uuid:workflow_id>/", apis.WorkflowDetailApi.as_view(), name="workflow-detail"),
    path("workflows/<uuid:workflow_id>/cancel/", apis.WorkflowCancelApi.as_view(), name="workflow-cancel"),
    # As the contract names it: POST /api/v1/workflows/{id}/signals/{name}, no final slash.
    path("workflows/<uuid:workflow_id>/signals/<str:name>", apis.WorkflowSignalApi.as_view(), name="workflow-signal"),
    path(
        "workflows/<uuid:workflow_id>/approvals/<str:task_id>",
        apis.WorkflowApprovalApi.as_view(),
        name="workflow-approve",
    ),
    path(
        "workflows/<uuid:workflow_id>/maps/<str:task_id>/results/",
        apis.WorkflowMapResultsApi.as_view(),
        name="workflow-map-results",
    ),
]

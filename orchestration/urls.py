from django.urls import path

from orchestration import apis

urlpatterns = [
    path("queues/", apis.QueueListApi.as_view(), name="queue-list"),
    path("breakers/", apis.BreakerListApi.as_view(), name="breaker-list"),
    path("breakers/<str:job_type>/", apis.BreakerDetailApi.as_view(), name="breaker-detail"),
]

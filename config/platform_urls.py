"""Everything the platform serves but the admin: the REST API, its schema and docs, /metrics,
the health checks and the dashboard. The reference deployment's `config.urls` mounts it at
the root beside the admin; a project of your own includes it where it likes (README, "Use it
from your project"), and its own admin shows our models."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from metrics import health
from metrics import views as metrics_views

urlpatterns = [
    path("api/v1/", include("jobs.urls")),
    path("api/v1/", include("logs.urls")),
    path("api/v1/", include("workflows.urls")),
    path("api/v1/", include("orchestration.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("metrics", metrics_views.metrics, name="metrics"),
    path("metrics/", metrics_views.metrics),
    path("health/live", health.live),
    path("health/live/", health.live, name="health-live"),
    path("health/ready", health.ready),
    path("health/ready/", health.ready, name="health-ready"),
    path("", include("dashboard.urls")),
]

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path, re_path
from django.views.generic import RedirectView

urlpatterns = [
    # The admin's pages of jobs and workflows moved with the apps' labels (jobs.labels): old
    # links land on the new ones. Only here, in the reference deployment: in a host project
    # /admin/jobs/ may be the host's own app.
    re_path(
        r"^admin/(?P<label>jobs|workflows)/(?P<rest>.*)$",
        RedirectView.as_view(url="/admin/orchestration_%(label)s/%(rest)s", permanent=True, query_string=True),
    ),
    path("admin/", admin.site.urls),
    path("", include("config.platform_urls")),  # the API, /metrics, /health, the dashboard
]


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": f"No route for {request.path}.", "code": "not_found"}, status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)  # type: ignore[arg-type]


def handler500(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Internal server error.", "code": "server_error"}, status=500)
    from django.views.defaults import server_error

    return server_error(request)

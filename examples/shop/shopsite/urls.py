from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),  # the platform's models are in the shop's admin too
    path("shop/", include("shop.urls")),
    path("", include("orchestration_platform.config.platform_urls")),  # its API, dashboard, /metrics, /health
]

from django.apps import AppConfig


class JobsConfig(AppConfig):
    """The shop's own `jobs` app: postings for its careers page (nothing to do with the
    platform's jobs; it shows a project can keep an app of that name)."""

    name = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

import os

from django.core.wsgi import get_wsgi_application

from config import tracing
from logs.context import service_name

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Before the application loads its middleware: Django's instrumentation adds its own.
tracing.setup(service_name())
application = get_wsgi_application()

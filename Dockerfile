# One image for every role; docker-compose.yml picks the command.
FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 DJANGO_ENV=production
WORKDIR /app
RUN useradd --system --create-home app
COPY requirements/ requirements/
RUN pip install -r requirements/prod.txt
COPY . .
RUN DJANGO_SECRET_KEY=build DJANGO_ALLOWED_HOSTS=build METRICS_TOKEN=build DATABASE_URL=postgres://build/build REDIS_URL=redis://build \
    python manage.py collectstatic --noinput
USER app
EXPOSE 8000
CMD ["gunicorn", "config.wsgi:application", "--config", "python:config.gunicorn", "--bind", "0.0.0.0:8000", "--workers", "3", "--threads", "4", "--worker-class", "gthread"]

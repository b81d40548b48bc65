# syntax=docker/dockerfile:1
# authsvc container image: gunicorn serving authsvc as an unprivileged user.
#
#   docker build -t authsvc .
#   docker run --env-file .env -p 8000:8000 authsvc            # see docker-compose.yml
#
# Two stages: "build" turns authsvc and every dependency into wheels (pip, setuptools and any
# compiler stay there); the final stage installs only those wheels, offline, on a slim base.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY setup.cfg pyproject.toml README.md constraints.txt ./
COPY authsvc ./authsvc
RUN python -m pip wheel --wheel-dir /wheels -c constraints.txt .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    AUTHSVC_ENV=production \
    AUTHSVC_BIND=0.0.0.0:8000 \
    AUTHSVC_DATA_DIR=/var/lib/authsvc
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels authsvc \
    && groupadd --system --gid 10001 authsvc \
    && useradd --system --uid 10001 --gid authsvc --home-dir /var/lib/authsvc \
       --shell /usr/sbin/nologin authsvc \
    && install -d -o authsvc -g authsvc -m 0700 /var/lib/authsvc
USER 10001:10001
WORKDIR /var/lib/authsvc
EXPOSE 8000
# Ready = the database, Orthanc and Keycloak answer (GET /readyz). Plain Python: the slim image
# has no curl, and the check must not need anything the image does not already hold.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('AUTHSVC_BIND', ':8000').rsplit(':', 1)[1]; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4).status == 200 else 1)"]
# "authsvc serve" validates the configuration (one line naming a bad key, exit 2) and then
# replaces itself with gunicorn (AUTHSVC_WORKERS, AUTHSVC_THREADS). Extra arguments go to
# gunicorn. The schema is created by a one-shot "authsvc init-db" (see docker-compose.yml).
ENTRYPOINT ["authsvc"]
CMD ["serve"]

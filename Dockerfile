# The gateway image; the simulated upstreams in docker-compose.yml run the same image with
# `gateway simulate`. Dependencies come from the hashed runtime lock (litellm included, so a
# deployment with `provider: litellm` works in production).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependencies first: this layer is rebuilt only when the lock changes.
COPY requirements/runtime.lock requirements/runtime.lock
RUN pip install --require-hashes -r requirements/runtime.lock

COPY pyproject.toml ./
COPY gateway/ gateway/
COPY policies/ policies/
COPY health/ health/
RUN pip install --no-deps --no-build-isolation . \
    && rm -rf build ./*.egg-info

COPY configs/ configs/

RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gateway
USER gateway

EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]

CMD ["gateway", "serve", "--config", "/app/configs/compose/gateway.yaml", "--host", "0.0.0.0"]

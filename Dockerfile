# syntax=docker/dockerfile:1
# tocsin in a container. Build: docker build -t tocsin .
# Run:   docker run -d --name tocsin -p 8080:8080 \
#          -v tocsin-state:/var/lib/tocsin \
#          -v /etc/tocsin/tocsin.toml:/etc/tocsin/tocsin.toml:ro tocsin
# The config must listen on all interfaces inside the container: [server] listen = "0.0.0.0:8080".
# Leave [store] url out: the store then lives in $STATE_DIRECTORY (the volume).
# Secrets: mount them as files (e.g. Docker secrets under /run/secrets/) and name those paths in
# token_file / secret_file.

# -- build: tocsin and every dependency as wheels ------------------------------------------------
FROM python:3.11-slim-bookworm AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- runtime: the wheels installed offline, no compiler, no build files ----------------------------
FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /var/lib/tocsin --shell /usr/sbin/nologin tocsin \
    && install -d -o tocsin -g tocsin -m 0700 /var/lib/tocsin \
    && install -d -m 0755 /etc/tocsin
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/tocsin-*.whl
ENV STATE_DIRECTORY=/var/lib/tocsin \
    PYTHONUNBUFFERED=1
VOLUME /var/lib/tocsin
EXPOSE 8080
# Numeric, so a runtime (e.g. Kubernetes runAsNonRoot) can check it is not root.
USER 10001:10001
# /healthz answers while the process is alive (the slim image has no curl: Python asks).
# The port is the container's 8080, as EXPOSEd above.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
CMD ["tocsin", "run", "--config", "/etc/tocsin/tocsin.toml"]

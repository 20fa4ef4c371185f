# syntax=docker/dockerfile:1
# tornado-proxy from its built wheel, as a non-root user (docs/operations.md, "Container").
#
#   docker build -t tornado-proxy .
#   docker run --rm -p 8000:8000 --stop-timeout 40 tornado-proxy        # the built-in echo model
#   docker run --rm -p 8000:8000 --stop-timeout 40 --env-file secrets.env \
#     -v ./config.json:/etc/tornado-proxy/config.json:ro -v tp-state:/var/lib/tornado-proxy tornado-proxy
#
# tests/deploy/test_image.py reads ENTRYPOINT, CMD, HEALTHCHECK, USER, ENV and VOLUME from
# this file and runs them against the wheel installed in a fresh venv (no Docker daemon there).

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
# pycurl has binary wheels for the common platforms; the compiler and the libcurl headers
# are for the others, so the build works everywhere.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libcurl4-openssl-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Our wheel and one for every dependency: the runtime stage installs offline, with no compiler.
RUN pip wheel --no-cache-dir --prefer-binary --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim-bookworm
# libcurl4: for a pycurl compiled in the build stage (the binary wheel bundles its own).
# tzdata: the scheduler resets per-day quotas at midnight in a named time zone.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libcurl4 tzdata \
 && rm -rf /var/lib/apt/lists/*
# The built wheel, not the source tree: the image runs what `pip install` of a release runs.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/tornado-proxy \
 && /opt/tornado-proxy/bin/pip install --no-cache-dir --no-index --find-links /wheels tornado-proxy
RUN groupadd --system --gid 10001 tornado-proxy \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tornado-proxy --no-create-home \
      --shell /usr/sbin/nologin tornado-proxy \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/tornado-proxy
# The default config is the built-in one (the echo model, plus OpenAI, Anthropic, Gemini and
# Bedrock when their keys are in the environment); mount your own over it.
COPY conf/default.json /etc/tornado-proxy/config.json
ENV PATH=/opt/tornado-proxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/tornado-proxy
# The accounts file, its lock files and the temp file of each atomic write live here: mount a
# directory (a named volume), never the file alone, or the rename over it fails.
VOLUME ["/var/lib/tornado-proxy"]
EXPOSE 8000
# SIGTERM drains: readiness 503, no new connections, streams in flight finish within
# server.drain_seconds (30 s by default). Give `docker stop` longer than that (--stop-timeout 40,
# compose's stop_grace_period); its default of 10 s cuts long streams.
STOPSIGNAL SIGTERM
# python -c rather than curl: the slim image has no curl. Any answer but 200 raises, exit 1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# Exec form: tornado-proxy is PID 1 and receives SIGTERM itself (no shell to swallow it).
# --workers is left out: the default is one worker per CPU of the container's CPU quota.
ENTRYPOINT ["tornado-proxy"]
CMD ["--config", "/etc/tornado-proxy/config.json", "--host", "0.0.0.0", "--port", "8000"]

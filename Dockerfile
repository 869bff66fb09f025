# keygate in a container: small (python:3.11-slim, wheels built in a throw-away stage),
# non-root, the data dir (SQLite store, admin token, pid file) as a volume.
#   docker build -t keygate .
#   docker run -p 127.0.0.1:8080:8080 -v keygate-data:/data -e ACCESS_PASSWORD=... keygate
# `docker stop` gives 10 s before SIGKILL; let the drain finish: `docker stop -t 40`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin keygate \
    && mkdir -p /data && chown keygate:keygate /data && chmod 0700 /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV PYTHONUNBUFFERED=1
ENV KEYGATE_HOST=0.0.0.0
ENV KEYGATE_PORT=8080
ENV KEYGATE_DATA_DIR=/data
VOLUME ["/data"]
USER keygate
WORKDIR /data
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('KEYGATE_PORT', '8080'), timeout=2)"]
CMD ["keygate", "serve"]

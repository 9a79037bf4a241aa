# tetik engine image. Production points it at real servers:
#   docker run -e TETIK_REDIS_URL=redis://redis:6379/0 -e TETIK_KAFKA_BOOTSTRAP=kafka:9092 tetik ingest
# Without those variables it starts the embedded valkey/tansu it ships with (demo only).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine engine
COPY flows flows
COPY channels channels
COPY clickstream clickstream
COPY bench bench
COPY cli cli
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --create-home tetik
USER tetik
ENTRYPOINT ["tetik"]
CMD ["run"]

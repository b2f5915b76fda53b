# The pipeline image: `nhjc` with its dependencies, nothing else.  The broker,
# TimescaleDB, Prometheus and Grafana run as their own containers (compose.yaml).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nhjc nhjc
COPY runtime runtime
COPY ingest ingest
COPY processing processing
COPY uplink uplink
COPY config config
COPY tools tools
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# A fixed numeric id: files mounted into the container (secrets, certificates) are made
# readable for it on the host (docs/operations.md).
RUN useradd --system --uid 10001 nhjc
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
ENV NHJC_METRICS__HOST=0.0.0.0
EXPOSE 9108
# Alive (the process answers); compose.yaml checks readiness (/readyz) instead.
HEALTHCHECK --interval=15s --timeout=3s CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["nhjc"]
CMD ["run"]

# The pipeline image: `nhjc` with its dependencies, nothing else.  The broker,
# TimescaleDB, Prometheus and Grafana run as their own containers (compose.yaml).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nhjc nhjc
COPY ingest ingest
COPY processing processing
COPY uplink uplink
COPY config config
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 nhjc
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER nhjc
ENV NHJC_METRICS__HOST=0.0.0.0
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9108/healthz').status != 200)"
ENTRYPOINT ["nhjc"]
CMD ["run"]

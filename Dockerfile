# The gateway image: `docker build -t model-gateway .`
# Run: docker run -p 8080:8080 -v $PWD/registry:/srv/registry -v $PWD/gateway.yaml:/etc/gateway.yaml \
#        model-gateway serve --config /etc/gateway.yaml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 10001 gateway
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY registry_client ./registry_client
COPY monitors ./monitors
COPY loadtests ./loadtests
RUN pip install . && mkdir -p /srv/registry /var/lib/gateway && chown gateway /var/lib/gateway

USER gateway
# Settings come from the config file and GATEWAY_* variables; listen on all interfaces in a container.
ENV GATEWAY_SERVER__HOST=0.0.0.0 \
    GATEWAY_SERVER__PORT=8080 \
    GATEWAY_REGISTRY__ROOT=/srv/registry \
    GATEWAY_REGISTRY__CACHE_DIR=/var/lib/gateway/model-cache \
    GATEWAY_FEATURE_LOG__SPOOL_DIR=/var/lib/gateway/spool
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=2)" || exit 1
ENTRYPOINT ["gateway"]
CMD ["serve"]

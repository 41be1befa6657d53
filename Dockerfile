# The model-gateway image: the gateway, the drift monitor, the retraining worker and the demo
# model in one image.
#
#   docker build -t model-gateway .
#   docker run -p 8080:8080 model-gateway                    # serves the built-in demo model
#   docker run -p 8080:8080 -v $PWD/registry:/srv/registry:ro \
#     -e GATEWAY_MODELS='[{"name": "fraud", "ref": "fraud@champion"}]' model-gateway
#   docker run -p 8090:8090 -e MONITOR_KAFKA__BOOTSTRAP_SERVERS=kafka:9092 model-gateway \
#     python -m monitors run --config /etc/model-gateway/monitor.yaml
#   docker run -p 8091:8091 -e RETRAIN_SECRET=... -e RETRAIN_CANARY__ADMIN_TOKEN=... model-gateway \
#     python -m monitors retrain serve --config /etc/model-gateway/retrain.yaml
#
# EXTRAS: extras of the wheel to install in the runtime stage. The retraining worker's demo trainer
# needs scikit-learn and skl2onnx, which the default image leaves out:
#   docker build --build-arg EXTRAS=demo -t model-gateway-retrain .
# With a trainer of your own, build FROM this image and pip install your trainer's packages.
#
# README.md "Deployment" says more; tests/deploy/test_image.py runs the install and start steps
# below outside a container.

# The build stage makes the wheel and trains the demo model into a local registry.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY registry_client ./registry_client
COPY monitors ./monitors
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install "$(ls /wheels/model_gateway-*.whl)[demo]" \
    && gateway demo --registry /registry

# The runtime stage: the wheel (with EXTRAS, none by default), the demo registry, default configs.
FROM python:3.11-slim
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /tmp/wheels
RUN pip install "$(ls /tmp/wheels/model_gateway-*.whl)${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /tmp/wheels \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/model-gateway gateway \
    && mkdir -p /var/lib/model-gateway/model-cache /var/lib/model-gateway/spool \
        /var/lib/model-gateway/monitor-state /var/lib/model-gateway/retrain-state \
    && chown -R 10001:10001 /var/lib/model-gateway
COPY --from=build /registry /srv/registry
COPY deploy/docker/gateway.yaml deploy/docker/monitor.yaml deploy/docker/retrain.yaml \
    /etc/model-gateway/
COPY deploy/docker/healthcheck.py /usr/local/lib/model-gateway/healthcheck.py

# A numeric user, so Kubernetes can check runAsNonRoot against the image.
USER 10001:10001
WORKDIR /var/lib/model-gateway
EXPOSE 8080 8090 8091
# Follows the container's command: the gateway's, the monitor's or the worker's port, from its
# config file, its GATEWAY_*/MONITOR_*/RETRAIN_* variables and its --port flag.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "/usr/local/lib/model-gateway/healthcheck.py"]
CMD ["gateway", "serve", "--config", "/etc/model-gateway/gateway.yaml"]

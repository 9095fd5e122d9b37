# syntax=docker/dockerfile:1
# One image for every microte service; the command picks which one runs:
#   docker run IMAGE serve clock|order-intake|matcher|meter-collector|ledger-writer
#   docker run IMAGE simulate --participants 50 --rounds 60
# Pin PYTHON_IMAGE to a digest in your registry mirror for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: resolve the pinned dependencies and install microte into a venv ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/microte
WORKDIR /src
# Dependencies first, in their own layer: a code change does not re-download the wheels.
# constraints.txt pins every transitive version (it lists the dev tools too, but a
# constraint only pins, it never installs): no dev dependency ends up in the image.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > requirements.txt \
 && /opt/microte/bin/pip install --constraint constraints.txt --requirement requirements.txt
COPY README.md ./
COPY shared ./shared
COPY services ./services
RUN /opt/microte/bin/pip install --constraint constraints.txt --no-deps . \
 && /opt/microte/bin/pip check \
 && /opt/microte/bin/pip uninstall --yes pip

# ---- runtime: the venv, a non-root user, nothing else ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="microte" \
      org.opencontainers.image.description="Peer-to-peer local energy market exchange (TREX MicroTE) as message-queue services" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 microte \
 && useradd --system --uid 10001 --gid microte --home-dir /var/lib/microte --no-create-home \
            --shell /usr/sbin/nologin microte \
 && install -d -o microte -g microte -m 0750 /var/lib/microte
COPY --from=build /opt/microte /opt/microte
# MICROTE_HTTP_HOST: the services default to loopback; in a container the kubelet,
# Docker's healthcheck and Prometheus must reach them on the pod/container address.
ENV PATH=/opt/microte/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MICROTE_HTTP_HOST=0.0.0.0 \
    MICROTE_HTTP_PORT=8000 \
    MICROTE_LEDGER_URL=sqlite:////var/lib/microte/ledger.sqlite
WORKDIR /var/lib/microte
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
# Readiness of the service (RabbitMQ and Redis connected, consuming). The slim image has
# no curl: the standard library does the request.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; p = os.environ.get('MICROTE_HTTP_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{p}/health', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["microte"]
CMD ["serve", "order-intake"]

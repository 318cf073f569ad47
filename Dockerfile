# One image, two entry points:
#   memoria-operator run     the operator (the Helm chart runs this)
#   memoria serve            a region (the operator renders Deployments running this)
# Probes: both expose GET /healthz (operator: --liveness port 8080; region: port 8080); Kubernetes
# probes are declared by the chart and by the operator's Deployments, so no HEALTHCHECK here.

# The public base by default; the test bed, which has no registry, passes a local stand-in built
# from Debian packages (testbed/images.py): --build-arg BASE_IMAGE=memoria.local/python:...
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY memoria ./memoria
COPY operator ./operator
COPY docker/requirements.lock ./requirements.lock
# wheels for the project and its pinned dependencies; nothing of this stage ships
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.lock \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="memoria-operator" \
      org.opencontainers.image.description="Memoria multi-region runtime and Kubernetes operator"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MEMORIA_HOST=0.0.0.0 \
    MEMORIA_PORT=8080
COPY --from=build /wheels /wheels
COPY docker/requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --no-index --find-links /wheels -r /tmp/requirements.lock \
 && pip install --no-cache-dir --no-index --find-links /wheels --no-deps memoria-operator==0.1.0 \
 && rm -rf /wheels /tmp/requirements.lock \
 && groupadd --system --gid 10001 memoria \
 && useradd --system --uid 10001 --gid memoria --home-dir /var/lib/memoria --create-home memoria
USER 10001:10001
WORKDIR /var/lib/memoria
EXPOSE 8080 8081
CMD ["memoria", "serve"]

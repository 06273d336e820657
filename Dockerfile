# One image for every dew-csi component: csi-secrets-store (`dew-csi driver`), dew-provider
# (`dew-csi provider`) and the admission webhook (`dew-csi webhook`). deploy/ picks the
# subcommand per container.
#
#   docker build -t dew-csi:0.2.0 .

# The package version (src/dew_csi/__init__.py), for the image label; the build stops when it
# differs from the wheel's (tests/unit/test_version.py checks it too).
ARG VERSION=0.2.0

# --- build: the project's wheel (hatchling runs in pip's isolated build environment here, so no
# build tool reaches the final image).
FROM python:3.11-slim AS build
ARG VERSION
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Shipped in the wheel as package data (the CRDs for the sandbox, the guide's YAML for the demo).
COPY deploy/crds ./deploy/crds
COPY examples ./examples
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && test -f "/wheels/dew_csi-${VERSION}-py3-none-any.whl"

# --- runtime
FROM python:3.11-slim
ARG VERSION
# The driver mounts each volume's tmpfs with `mount -t tmpfs` and unmounts with `umount`
# (util-linux); Debian's slim image does not guarantee the `mount` package.
RUN apt-get update \
    && apt-get install -y --no-install-recommends mount util-linux \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels
# An unprivileged user for the webhook (its Deployment sets runAsUser 65532). The image itself
# stays root: the driver must run as root in a privileged container to mount tmpfs, and the
# provider creates its socket in a root-owned host directory (with every capability dropped).
RUN groupadd --system --gid 65532 dewcsi \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin dewcsi
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="dew-csi" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.description="Secrets Store CSI driver and Huawei Cloud CSMS provider (CCE Secrets Manager for DEW)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["dew-csi"]
CMD ["--help"]

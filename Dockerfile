# PyChat server image: `docker compose up` uses it for every service (see docker-compose.yml).
# Alone: `docker build -t pychat . && docker run -p 65432:65432 -v pychat-data:/data pychat`
# runs `pychat serve` (a router and 2 acceptors) in one container.

# The base image, pinned to an exact release so that a rebuild gets the same Python and Debian
# (bump it on purpose). A digest would pin it harder; it was not looked up, as the machine this
# was written on has no route to a registry: `docker buildx imagetools inspect` gives it, then
# write python:3.12.12-slim-bookworm@sha256:... here.
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

# Stage 1: build wheels for the package and its runtime dependencies (with the `speed` extra,
# uvloop; not the `test` extra). Only the wheels leave this stage: no source tree, no setuptools.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY pychat ./pychat
COPY wire ./wire
COPY acceptor ./acceptor
COPY router ./router
COPY clients ./clients
RUN pip wheel --wheel-dir /wheels ".[speed]"

# Stage 2: the runtime. The wheels are installed from the build stage's folder (mounted, not
# copied, so they are not left in a layer); no compiler was ever installed.
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# /data (history) and /keys (the bus's CurveZMQ keys) are volume mount points: a fresh named
# volume takes the folder's owner and mode from the image, so the pychat user can write there
# and nobody else can read the keys.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "pychat[speed]" \
    && useradd --system --uid 10001 --user-group --home-dir /home/pychat --create-home pychat \
    && install -d -m 0755 -o pychat -g pychat /data \
    && install -d -m 0700 -o pychat -g pychat /keys

# A container serves clients from outside it; history goes to /data (mount a volume there).
# Nothing is written anywhere else but $TMPDIR (`pychat serve` makes its ipc:// folder there)
# and no bytecode is written (PYTHONDONTWRITEBYTECODE), so the root filesystem can be read-only
# (docker-compose.yml: read_only, a tmpfs at /tmp).
ENV PYCHAT_HOST=0.0.0.0 PYCHAT_DATA_DIR=/data
VOLUME ["/data"]
USER pychat
WORKDIR /home/pychat
EXPOSE 65432 65431

# Something listens on the client port (PYCHAT_PORT). It reads /proc and opens no chat session.
# docker-compose.yml sets its own check per service (the router's asks the router itself).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "pychat.healthcheck", "clients"]

ENTRYPOINT ["pychat"]
CMD ["serve"]

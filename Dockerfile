# PyChat server image: `docker compose up` uses it for both services (see docker-compose.yml).
# Alone: `docker build -t pychat . && docker run -p 65432:65432 -v pychat-data:/data pychat`
# runs `pychat serve` (a router and 2 acceptors) in one container.

# Stage 1: build wheels for the package and its runtime dependencies (with the `speed` extra,
# uvloop; not the `test` extra). Only the wheels leave this stage: no source tree, no setuptools.
FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pychat ./pychat
COPY wire ./wire
COPY acceptor ./acceptor
COPY router ./router
COPY clients ./clients
RUN pip wheel --wheel-dir /wheels ".[speed]"

# Stage 2: the runtime. The wheels are installed from the build stage's folder (mounted, not
# copied, so they are not left in a layer); no compiler was ever installed.
FROM python:3.12-slim
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "pychat[speed]" \
    && useradd --system --uid 10001 --user-group --home-dir /home/pychat --create-home pychat \
    && mkdir /data && chown pychat:pychat /data

# A container serves clients from outside it; history goes to /data (mount a volume there: a
# fresh named volume takes the folder's owner from the image, so the pychat user can write).
ENV PYCHAT_HOST=0.0.0.0 PYCHAT_DATA_DIR=/data
VOLUME ["/data"]
USER pychat
WORKDIR /home/pychat
EXPOSE 65432 65431

# Something listens on the client port (PYCHAT_PORT). It reads /proc and opens no chat session.
# docker-compose.yml sets its own check per service.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "pychat.healthcheck", "clients"]

ENTRYPOINT ["pychat"]
CMD ["serve"]

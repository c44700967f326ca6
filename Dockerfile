# One image for both commands: `ebbtide controller` and `ebbtide gateway` (the chart passes the
# subcommand as the container's args). Build from the repository root:
#   docker build -t ghcr.io/ebbtide/ebbtide:0.1.0 .
# Pin the base by digest in your own registry when you release (tag@sha256:...): a tag can move.

# --- build: a wheel of the project and of every dependency, so the runtime stage needs no compiler --
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY policies/ policies/
COPY controller/ controller/
COPY gateway/ gateway/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime ---------------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm
# No .pyc writes (the chart mounts the root filesystem read-only), unbuffered logs, matplotlib's cache
# (imported only by `ebbtide simulate`) in the writable /tmp.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-compile /wheels/*.whl && rm -rf /wheels \
    && ebbtide --help >/dev/null
# The same uid as the chart's podSecurityContext; no shell login, no home directory writes needed.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["ebbtide"]
CMD ["--help"]

# The segment-stream worker: `docker build -t segment-stream .` then
#   docker run --rm -p 127.0.0.1:6066:6066 -e KAFKA_BOOTSTRAP_SERVERS=HOST:9092 \
#     -e SEGMENTS_ADVERTISED_URL=http://HOST:6066 segment-stream
# (docker-compose.yml runs Kafka, Redis and two workers together.)
#
# Dependencies come from requirements.lock (exact versions and hashes; scripts/lock.sh makes it);
# the base image is pinned to an exact Python release.

# Stage 1: build the project's wheel (no compiler needed: every dependency ships wheels).
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY api ./api
RUN pip wheel --no-deps --wheel-dir /wheels .

# Stage 2: the runtime image, the locked dependencies and the project only (a regular,
# non-editable install), run by an unprivileged user.
FROM python:3.11.13-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.lock /tmp/requirements.lock
COPY --from=build /wheels /wheels
RUN pip install --require-hashes --only-binary :all: -r /tmp/requirements.lock \
    && pip install --no-deps /wheels/*.whl \
    && rm -rf /wheels /tmp/requirements.lock \
    && groupadd --system --gid 10001 segments \
    && useradd --system --uid 10001 --gid segments --create-home --home-dir /home/segments \
       --shell /usr/sbin/nologin segments
USER segments
WORKDIR /home/segments
# Listen on every interface of the container; SEGMENTS_ADVERTISED_URL must then say where the
# other workers reach this one (the worker refuses to start without it).
ENV SEGMENTS_WEB_HOST=0.0.0.0 \
    SEGMENTS_WEB_PORT=6066
EXPOSE 6066
ENTRYPOINT ["segments"]
CMD ["worker"]

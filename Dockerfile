# The segment-stream worker: `docker build -t segment-stream .` then
#   docker run --rm -p 127.0.0.1:6066:6066 -e KAFKA_BOOTSTRAP_SERVERS=HOST:9092 segment-stream
# (docker-compose.yml runs Kafka, Redis and two workers together.)

# Stage 1: build the project's wheel (no compiler needed: every dependency ships wheels).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# README.md* matches nothing while the project has no README; pyproject.toml keeps COPY valid.
COPY pyproject.toml README.md* ./
COPY streams ./streams
COPY api ./api
RUN pip wheel --no-deps --wheel-dir /wheels .

# Stage 2: the runtime image, the project and its dependencies only (a regular, non-editable
# install), run by an unprivileged user.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 segments \
    && useradd --system --uid 10001 --gid segments --create-home --home-dir /home/segments \
       --shell /usr/sbin/nologin segments
USER segments
WORKDIR /home/segments
# Listen on every interface of the container. With more than one worker, also set
# SEGMENTS_ADVERTISED_URL to a URL the other workers can reach (e.g. http://worker-1:6066).
ENV SEGMENTS_WEB_HOST=0.0.0.0 \
    SEGMENTS_WEB_PORT=6066
EXPOSE 6066
ENTRYPOINT ["segments"]
CMD ["worker"]

# The rating worker image: `docker build -t rating:<version> .`
# ENTRYPOINT is the `rating` command, so the container's command picks the subcommand:
# `worker` (default), `billing-sim`, `rate ...`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies and package first: source edits then rebuild only the last layers.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf /app/src /app/build

# The sample rate cards, the default for RATING_RATE_CARDS; mount your own over it.
COPY ratecards ./ratecards

# An unprivileged user; the faust data dir must be writable by it.
RUN useradd --system --uid 10001 --home-dir /app --no-create-home rating \
    && mkdir -p /var/lib/rating && chown rating /var/lib/rating
USER 10001

ENV RATING_RATE_CARDS=/app/ratecards/sample.json \
    RATING_DATA_DIR=/var/lib/rating \
    RATING_WEB_PORT=6066
EXPOSE 6066

ENTRYPOINT ["rating"]
CMD ["worker"]

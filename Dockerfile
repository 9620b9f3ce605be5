# One image for the API, the workers and the one-shot migration.
# CPU by default; for GPU workers build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 GAUNTLET_DATA_DIR=/data
WORKDIR /app

# bubblewrap: the namespace sandbox that model jails run in (README, "The jail").
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

# torch first and pinned, from the chosen index, so the rest cannot pull another build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md alembic.ini ./
COPY service service
COPY worker worker
COPY adversarial adversarial
COPY client client
COPY migrations migrations
RUN pip install ".[worker,s3]"

RUN useradd --create-home gauntlet && mkdir -p /data && chown gauntlet /data
USER gauntlet
EXPOSE 8000
CMD ["uvicorn", "service.main:app", "--host", "0.0.0.0", "--port", "8000"]

# One file, one image per service: `--target train-svc | model-svc | stream-svc`.
# Dependencies come from pyproject.toml (base set + the service's extra) pinned by constraints.txt, installed
# into /opt/venv in a throwaway stage; the runtime stages copy only that venv and the source they run.
# TensorFlow is in train-svc and model-svc only. Nothing here runs as root at runtime.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------- dependency stages (discarded)
FROM ${PYTHON_IMAGE} AS deps-base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    REQUIREMENTS_PY="import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *p['optional-dependencies'][sys.argv[1]], sep=chr(10))"
WORKDIR /build
# setuptools and wheel are runtime dependencies of TensorFlow that constraints.txt (a pip freeze) leaves out:
# pinned here, so no image ships the old setuptools that `venv` bundles.
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir pip==26.3 setuptools==84.2.1 wheel==0.48.0
# Only the dependency manifests, so a code change does not reinstall TensorFlow.
COPY pyproject.toml constraints.txt ./

FROM deps-base AS deps-train
RUN python -c "$REQUIREMENTS_PY" train > requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements.txt

FROM deps-base AS deps-model
RUN python -c "$REQUIREMENTS_PY" ml > requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements.txt

FROM deps-base AS deps-stream
RUN python -c "$REQUIREMENTS_PY" stream > requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements.txt

# ---------------------------------------------------------------- shared runtime base
FROM ${PYTHON_IMAGE} AS runtime
# The root filesystem is read-only in Kubernetes: caches and config homes point at /tmp (an emptyDir there).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    HOME=/tmp \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
WORKDIR /app
# Shared code: the library (its Keras part, sentiment/ml, only where TensorFlow is) and the committed stubs.
COPY sentiment/*.py /app/sentiment/
COPY protos/ /app/protos/
# The build, as each program reports it (`<program>_build_info`, train_svc's manifests): CI passes the
# image tag and the commit.
ARG CODE_VERSION=unknown
ARG CODE_REVISION=unknown
ENV CODE_VERSION=${CODE_VERSION} \
    CODE_REVISION=${CODE_REVISION}
LABEL org.opencontainers.image.title="tweet-sentiment" \
      org.opencontainers.image.description="Tweet sentiment: train, serve and stream over async gRPC"

# ---------------------------------------------------------------- train_svc (50051, metrics 8001)
FROM runtime AS train-svc
COPY --from=deps-train /opt/venv /opt/venv
COPY sentiment/ml/ /app/sentiment/ml/
COPY train_svc/ /app/train_svc/
RUN python -m compileall -q /app
USER 10001:10001
EXPOSE 50051 8001
ENTRYPOINT ["python", "-m", "train_svc"]

# ---------------------------------------------------------------- model_svc (50052, metrics 8002)
FROM runtime AS model-svc
COPY --from=deps-model /opt/venv /opt/venv
# The Keras layers a trained model may contain, so the model file loads (no training code).
COPY sentiment/ml/ /app/sentiment/ml/
COPY model_svc/ /app/model_svc/
RUN python -m compileall -q /app
USER 10001:10001
EXPOSE 50052 8002
ENTRYPOINT ["python", "-m", "model_svc"]

# ---------------------------------------------------------------- stream_svc (metrics 8003)
FROM runtime AS stream-svc
COPY --from=deps-stream /opt/venv /opt/venv
COPY stream_svc/ /app/stream_svc/
RUN python -m compileall -q /app
USER 10001:10001
EXPOSE 8003
ENTRYPOINT ["python", "-m", "stream_svc"]

# Understudy: the proxy, the training worker and the offline teacher (`understudy up`).
# The image builds llama-cpp-python from source (a C/C++ toolchain and CMake are needed).
# CPU build; for CUDA, start from an nvidia/cuda devel image and set
# CMAKE_ARGS="-DGGML_CUDA=on" before the pip install.
FROM python:3.12-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY understudy ./understudy
# these four install as understudy.proxy, understudy.training, ... (pyproject's package-dir)
COPY proxy ./proxy
COPY training ./training
COPY routing ./routing
COPY jac_examples ./jac_examples
RUN pip install --no-cache-dir .

ENV UNDERSTUDY_HOST=0.0.0.0 \
    UNDERSTUDY_PORT=8000 \
    UNDERSTUDY_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
HEALTHCHECK CMD python -c "import httpx; httpx.get('http://127.0.0.1:8000/healthz').raise_for_status()"
# Set UNDERSTUDY_UPSTREAM_KEY (or OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY) to use real
# upstreams; without a key the offline teacher answers.
# Client keys are required: the proxy listens on 0.0.0.0 and refuses to start without them, since
# anyone reaching the port would spend the upstream keys. Make one in the volume first (printed
# once, stored hashed in /data/client-keys.json); clients send it as `Authorization: Bearer`:
#   docker run --rm -v understudy-data:/data understudy understudy keys add my-app
# or mount a keys file elsewhere and set UNDERSTUDY_CLIENT_KEYS_FILE to it.
CMD ["understudy", "up"]

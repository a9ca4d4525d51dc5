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
CMD ["understudy", "up"]

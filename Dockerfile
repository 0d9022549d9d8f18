# The personahub worker image (docker-compose.yml's `worker`): the package with the embedded
# embedding model on CPU torch. The chat LLM is the compose file's `llm` service, so llama-server
# is not built here.
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY personahub personahub
COPY flows flows
COPY tasks tasks
COPY prompts prompts
COPY corpus corpus
COPY deployments deployments
# CPU torch from its own index: a bare `torch` requirement pulls the CUDA build (gigabytes).
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir '.[embed]'
ENV DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
CMD ["personahub", "worker", "--pool", "personahub"]

# otelpipe worker image (used by docker-compose.yml). The native columnar core (native/, Rust) is
# built in a first stage with a minimal Rust toolchain; the image that runs carries its compiled
# module, not the toolchain.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends curl gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY native ./native
COPY streams ./streams
COPY sinks ./sinks
# an editable install builds the module in place, next to the Python files
RUN pip install --no-cache-dir --no-deps -e . \
    && ls streams/otlp/_native*.so

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY sinks ./sinks
COPY schemas ./schemas
COPY kafka ./kafka
COPY --from=build /app/streams/otlp/_native*.so ./streams/otlp/
# The native core is in place already (no cargo here, and no native/ to build it from).
RUN pip install --no-cache-dir -e . \
    && python -c "from streams.otlp import native; assert native.available(), 'native core missing'"
EXPOSE 6066
ENTRYPOINT ["otelpipe"]
CMD ["run"]

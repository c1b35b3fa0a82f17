# otelpipe worker image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY sinks ./sinks
COPY schemas ./schemas
COPY kafka ./kafka
RUN pip install --no-cache-dir -e .
EXPOSE 6066
ENTRYPOINT ["otelpipe"]
CMD ["run"]

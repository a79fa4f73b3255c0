# The BFF alone (bring your own Redis): gunicorn, non-root, with a health check.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bff ./bff
RUN pip install . \
 && groupadd --system --gid 10001 bff \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin bff

# Numeric, so runAsNonRoot can verify it; the root file system can be mounted read-only (writable /tmp).
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"
# SIGTERM: stops accepting, finishes the requests in flight (up to 20 s), exits 0. Set --workers where the
# container sees more CPUs than it may use (the default is one gevent worker per CPU).
CMD ["bff", "serve", "--host", "0.0.0.0", "--port", "8000"]

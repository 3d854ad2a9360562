# syntax=docker/dockerfile:1
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000 \
    REDIS_HOST=redis

WORKDIR /app

COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin app
# Everything but what .dockerignore leaves out (tests, the benchmark, local state): the modules,
# their packages and the chat page's static files.
COPY --chown=10001:10001 . ./

USER 10001
EXPOSE 8000

# The image's Python answers the health check, so no curl is needed in a slim image.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health\", timeout=2).status == 200 else 1)"]

# The same start command the tests run: `python app.py` reads HOST and PORT from the environment.
CMD ["python", "app.py"]

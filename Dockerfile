# The Personalization Monitor worker: `docker build -t personalization-monitor .`
# Runs `pmon worker` by default; any other pmon command works too, e.g.
#   docker run --rm personalization-monitor simulate --to-kafka
# Configuration is PMON_* environment variables only (see README.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package build needs: pyproject.toml names README.md as its readme.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streams/ streams/
COPY detectors/ detectors/
COPY incidents/ incidents/
COPY plans/ plans/
COPY governance/ governance/
COPY experiments/ experiments/
RUN pip install . \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/pmon --create-home --shell /usr/sbin/nologin pmon

# Faust keeps its data directory (<PMON_APP_ID>-data) in the working directory and the
# plan documents go to PMON_PLAN_DIR: both under the non-root user's home.
WORKDIR /var/lib/pmon
USER pmon
ENV PMON_PLAN_DIR=/var/lib/pmon/plans
RUN mkdir -p /var/lib/pmon/plans
VOLUME ["/var/lib/pmon/plans"]

# The web server (report view /pmon/report/ and /metrics) binds PMON_WEB_HOST, which
# stays 127.0.0.1 by default, as outside a container: set PMON_WEB_HOST=0.0.0.0 to
# reach it from outside the container (docker-compose.yml does).
EXPOSE 6066
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('PMON_WEB_PORT', '6066'), timeout=4)"

ENTRYPOINT ["pmon"]
CMD ["worker"]

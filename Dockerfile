# KiMap for cohort batches: the client (`kimap cohort ...`) and Dask workers (`dask worker ...`) in one image.
# The install is `make setup`'s: the exact pins of requirements.txt, then KiMap itself (editable, no dependencies),
# so the image computes the same values as a developer's checkout. Research use only: not a medical device.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

WORKDIR /opt/kimap

# the pinned dependencies first (their layer is reused while only KiMap's code changes)
COPY requirements.txt pyproject.toml ./
RUN python -m pip install -r requirements.txt

COPY README.md ./
COPY Resources ./Resources
COPY KiMapLib ./KiMapLib
RUN python -m pip install --no-deps -e . \
    && python -c "from KiMapLib.features.featuremaps import warm_up; warm_up()"

# images, biopsies, models and outputs: the same path in every container and on every machine (shared storage)
RUN useradd --create-home --uid 1000 kimap && mkdir -p /data && chown kimap:kimap /data
USER 1000:1000
WORKDIR /data

CMD ["kimap", "--help"]

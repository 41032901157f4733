# clawsup layered onto the Clawdbot gateway's image.
#
# clawsup runs as PID 1: it starts the gateway as its child, reaps every zombie, restarts
# the gateway on crash, hang (D state) or a wedged event loop, clears orphaned session
# locks and answers `clawsupctl health` for the HEALTHCHECK below.
#
#   docker build -t clawdbot-clawsup .
#   docker run -d --name clawdbot --stop-timeout 30 -p 127.0.0.1:18789:18789 \
#       -e CLAWDBOT_GATEWAY_TOKEN -v clawdbot-home:/home/node/.clawdbot clawdbot-clawsup
#   docker exec clawdbot clawsupctl status
#
# Build arguments:
#   BASE_IMAGE        The gateway image clawsup is layered onto. The default, "gateway", is
#                     the stage below: node:22-bookworm with the `clawdbot` npm package
#                     installed in /app. Pass your own prebuilt gateway image instead, e.g.
#                       docker build --build-arg BASE_IMAGE=clawdbot:local .
#                     (BuildKit then skips the unused gateway stage and its npm install).
#                     The image must be Debian-based (apt-get), have the unprivileged `node`
#                     user, and start the gateway as etc/clawsup.toml says: in /app,
#                     `node --disable-sigusr1 dist/index.js gateway --bind lan --port 18789`
#                     (the layout of the upstream Dockerfile; the flag keeps a SIGUSR1 from
#                     opening the Node inspector). Elsewhere, mount an override file and
#                     append it to the command line (its keys win):
#                       docker run ... -v ./override.toml:/etc/clawsup/override.toml:ro \
#                           IMAGE -c /etc/clawsup/override.toml
#   NODE_IMAGE        The Node.js image the default gateway is built from.
#   CLAWDBOT_VERSION  The `clawdbot` npm package version the default gateway installs.
#
# `docker stop` waits 10 s before SIGKILL by default, exactly the gateway's stop_timeout
# in etc/clawsup.toml: give clawsup more (`--stop-timeout 30`, or stop_grace_period in
# docker-compose.yml) so it can stop the gateway gracefully and exit on its own.
# No `--init` is needed: clawsup is the init (it reaps orphans as PID 1).

ARG NODE_IMAGE=node:22-bookworm
ARG BASE_IMAGE=gateway

# -- the default gateway: the `clawdbot` npm package ---------------------------------------
FROM ${NODE_IMAGE} AS gateway
ARG CLAWDBOT_VERSION=2026.1.24
ENV NODE_ENV=production
# A global install (no devDependencies: installing in the unpacked package's own directory
# fails on their peer-dependency conflicts), then the package moved to /app, where the
# upstream image keeps the gateway and where etc/clawsup.toml starts it. The global
# `clawdbot` launcher keeps working through the symlink left in its place.
RUN set -eux; \
    npm install --global --no-audit --no-fund "clawdbot@${CLAWDBOT_VERSION}"; \
    npm cache clean --force; \
    root="$(npm root --global)"; \
    mv "${root}/clawdbot" /app; \
    ln -s /app "${root}/clawdbot"; \
    test -f /app/dist/index.js
WORKDIR /app
# `node` is uid 1000 in the node images; Kubernetes sets runAsUser: 1000 to match.
# hadolint ignore=DL3066
USER node
# What this stage runs on its own (and what clawsup runs in the final image).
CMD ["node", "--disable-sigusr1", "dist/index.js", "gateway", "--bind", "lan", "--port", "18789"]

# -- clawsup on top of the gateway ------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG CLAWSUP_VERSION=0.1.0
LABEL org.opencontainers.image.title="clawdbot-clawsup" \
      org.opencontainers.image.description="The Clawdbot gateway supervised by clawsup: a PID-1 process supervisor with reaping, backoff, hang detection, a session janitor and a ZeroMQ control socket" \
      org.opencontainers.image.version="${CLAWSUP_VERSION}" \
      org.opencontainers.image.licenses="MIT"

# hadolint ignore=DL3066
USER root

# Python 3 (bookworm: 3.11) and venv for clawsup. Debian's versions are not pinned: the
# security updates of the release are wanted.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# clawsup in its own venv; only its two commands go on PATH, so the gateway and its
# skills still find the system python3, not the venv's.
COPY pyproject.toml README.md /tmp/clawsup-src/
COPY clawsup /tmp/clawsup-src/clawsup
RUN python3 -m venv /opt/clawsup \
    && /opt/clawsup/bin/pip install --no-cache-dir --disable-pip-version-check /tmp/clawsup-src \
    && rm -rf /tmp/clawsup-src \
    && ln -s /opt/clawsup/bin/clawsup /opt/clawsup/bin/clawsupctl /usr/local/bin/ \
    && clawsup --version

# The shipped config, unchanged: the single source of truth for the gateway's command.
# Then run_dir (control.sock, events.sock) and state_dir (overrides, incident log) as in
# that config, and the gateway's home: all the node user's, and private to it.
COPY etc/clawsup.toml /etc/clawsup/clawsup.toml
RUN clawsup check -c /etc/clawsup/clawsup.toml \
    && install -d -o node -g node -m 0700 /run/clawsup /var/lib/clawsup /home/node/.clawdbot

# clawsupctl's default, said out loud: change both if you move run_dir.
ENV CLAWSUP_SOCKET=ipc:///run/clawsup/control.sock

# `node` is uid 1000 in the node images; Kubernetes sets runAsUser: 1000 to match.
# hadolint ignore=DL3066
USER node
WORKDIR /home/node
VOLUME ["/home/node/.clawdbot"]
EXPOSE 18789

STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --retries=3 --start-period=40s \
    CMD ["clawsupctl", "health"]
ENTRYPOINT ["clawsup", "run", "-c", "/etc/clawsup/clawsup.toml"]
# Arguments given to `docker run IMAGE ...` are appended to the ENTRYPOINT: `-c FILE`
# adds an override config whose keys win over the shipped one.
CMD []

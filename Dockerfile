# clawsup layered onto the Clawdbot gateway's image.
#
# clawsup runs as PID 1: it starts the gateway as its child, reaps every zombie, restarts
# the gateway on crash, hang (D state) or a wedged event loop, clears orphaned session
# locks and answers `clawsupctl health` for the HEALTHCHECK below.
#
#   docker build -t clawdbot-clawsup .
#   docker run -d --name clawdbot -p 127.0.0.1:18789:18789 \
#       -e CLAWDBOT_GATEWAY_TOKEN="$(openssl rand -hex 32)" \
#       -v clawdbot-home:/home/node/.clawdbot -v clawsup-state:/var/lib/clawsup \
#       clawdbot-clawsup
#   docker exec clawdbot clawsupctl status
#
# First run: on an empty volume clawsup writes a minimal gateway config
# (~/.clawdbot/clawdbot.json: gateway.mode "local", the workspace on the volume); an
# existing one is never touched. Without CLAWDBOT_GATEWAY_TOKEN (or gateway.auth.token
# in that file) the gateway refuses to bind the LAN: clawsup says so in one line and
# exits 2 instead of crash-looping it.
#
# Build arguments:
#   BASE_IMAGE        The gateway image clawsup is layered onto. The default, "gateway", is
#                     the stage below: node:22-bookworm with the `clawdbot` npm package in
#                     /app. Pass your own prebuilt gateway image instead, e.g.
#                       docker build --build-arg BASE_IMAGE=clawdbot:local .
#                     BuildKit then skips the gateway stage; the legacy builder
#                     (DOCKER_BUILDKIT=0) runs every stage, so the gateway stage's install
#                     sees BASE_IMAGE and does nothing (only NODE_IMAGE is pulled).
#                     The image must be Debian-based (apt-get), have the unprivileged `node`
#                     user, and hold the gateway as etc/clawsup.toml starts it: in /app,
#                     `node --disable-sigusr1 dist/index.js gateway --bind lan --port 18789`
#                     (the layout of the upstream Dockerfile; the flag keeps a SIGUSR1 from
#                     opening the Node inspector); the build runs its CLI there. Elsewhere,
#                     mount an override file and append it to the command line (its keys
#                     win):
#                       docker run ... -v ./override.toml:/etc/clawsup/override.toml:ro \
#                           IMAGE -c /etc/clawsup/override.toml
#   NODE_IMAGE        The Node.js (>= 22.12) image the default gateway is built from.
#   CLAWDBOT_VERSION  The `clawdbot` npm release the default gateway installs. Pinned:
#                     2026.1.24 as published cannot load its own modules
#                     (ERR_MODULE_NOT_FOUND), and 2026.1.24-3 sorts before it in semver, so
#                     `latest` is the broken one. To move to a newer release:
#                       docker build --build-arg CLAWDBOT_VERSION=2026.2.1 .
#                     The build fails if that release's CLI does not run.
#   LOCAL_MODELS      "false" (default): without node-llama-cpp, the optional dependency
#                     the gateway loads only for local embedding models
#                     (memorySearch.local); it and what only it needs are about 0.9 GB of
#                     the image. "true" keeps it.
#
# `docker stop` waits 10 s before SIGKILL by default: the gateway's stop_timeout (7 s in
# etc/clawsup.toml; the gateway forces its own exit 5 s after SIGTERM) leaves clawsup time
# to exit on its own. Lengthen both together: a longer stop_timeout in an override file,
# and `docker run --stop-timeout` (compose: stop_grace_period) at least 3 s above it.
# No `--init` is needed: clawsup is the init (it reaps orphans as PID 1).

ARG NODE_IMAGE=node:22-bookworm
ARG BASE_IMAGE=gateway

# -- the default gateway: the `clawdbot` npm package ---------------------------------------
FROM ${NODE_IMAGE} AS gateway
ARG BASE_IMAGE
ARG CLAWDBOT_VERSION=2026.1.24-3
ARG LOCAL_MODELS=false
ENV NODE_ENV=production
# Installed as a dependency of an app directory, not globally: only there do package.json
# overrides apply, and "libsignal": "6.0.0" replaces a WhatsApp dependency's GitHub URL
# (not reachable everywhere; npm's libsignal@6.0.0 is the same code). Without local
# models, the release's package.json loses its optional node-llama-cpp before npm sees
# it, so npm leaves out everything only that package needs. The package and its
# node_modules are then laid out as the upstream image has them: /app/dist/index.js,
# /app/node_modules. The release must load its own modules: its CLI runs, or the build
# fails (run from /app: node cannot start in a deleted working directory). Then npm's
# caches go, and the CLI's log directory, /tmp/clawdbot: left owned by root, the gateway
# could not log there.
WORKDIR /tmp/clawdbot-install
# hadolint ignore=DL3003
RUN set -eux; \
    if [ "${BASE_IMAGE}" != gateway ]; then echo "BASE_IMAGE=${BASE_IMAGE}: gateway stage unused"; exit 0; fi; \
    npm pack --silent "clawdbot@${CLAWDBOT_VERSION}" > tarball; \
    mkdir release; \
    tar -xzf "$(cat tarball)" -C release; \
    if [ "${LOCAL_MODELS}" = false ]; then \
        node -e 'const fs = require("fs"), f = "release/package/package.json"; const p = JSON.parse(fs.readFileSync(f)); delete p.optionalDependencies["node-llama-cpp"]; fs.writeFileSync(f, JSON.stringify(p, null, 2));'; \
    fi; \
    tar -czf clawdbot.tgz -C release package; \
    printf '{"name":"clawdbot-app","private":true,"dependencies":{"clawdbot":"file:/tmp/clawdbot-install/clawdbot.tgz"},"overrides":{"libsignal":"6.0.0"}}\n' > package.json; \
    npm install --omit=dev --no-audit --no-fund --loglevel=error; \
    mv node_modules/clawdbot /app; \
    mv node_modules /app/node_modules; \
    ln -s /app/dist/entry.js /usr/local/bin/clawdbot; \
    cd /app; \
    node dist/index.js --version; \
    rm -rf /tmp/clawdbot-install /root/.npm /tmp/node-compile-cache /tmp/clawdbot
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
# security updates of the release are wanted. A /tmp/clawdbot left by the base image's
# build would be root's, and the gateway (node) logs there.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* /tmp/clawdbot

# The gateway's compile cache, made here once instead of in every new container: the
# gateway compiles its TypeScript plugins with jiti into $TMPDIR/jiti, and from a cold
# cache a start takes 29-55 s, 40 s of CPU and a 1.1-1.3 GB peak, against 5-9 s warm.
# `plugins list` loads every plugin as the gateway does (same files, same cache entries)
# and touches nothing in the gateway's home. TMPDIR points there at run time too; the
# directory is the node user's, since jiti uses a cache only where it may write.
ENV TMPDIR=/var/cache/clawdbot/tmp
RUN install -d -o node -g node -m 0700 /var/cache/clawdbot /var/cache/clawdbot/tmp
# hadolint ignore=DL3066
USER node
WORKDIR /app
RUN node dist/index.js --version \
    && NO_COLOR=1 node dist/index.js plugins list > /dev/null \
    && test -d /var/cache/clawdbot/tmp/jiti \
    && rm -rf /tmp/clawdbot "${TMPDIR}"/clawdbot-*
# hadolint ignore=DL3066
USER root

# clawsup in its own venv; only its two commands go on PATH, so the gateway and its
# skills still find the system python3, not the venv's.
COPY pyproject.toml README.md /tmp/clawsup-src/
COPY clawsup /tmp/clawsup-src/clawsup
RUN python3 -m venv /opt/clawsup \
    && /opt/clawsup/bin/pip install --no-cache-dir --disable-pip-version-check /tmp/clawsup-src \
    && rm -rf /tmp/clawsup-src \
    && ln -s /opt/clawsup/bin/clawsup /opt/clawsup/bin/clawsupctl /usr/local/bin/ \
    && clawsup --version

# The clawsup skill (status, health, incidents, set-model, set-timezone, restart when
# idle) among the gateway's bundled skills, <its package>/skills: in the image, not on
# the volume, so a new image brings its new version. A skill of the same name in
# ~/.clawdbot/skills wins over it.
RUN clawsup install-skill /app/skills

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
# The gateway's home (config, credentials, sessions, workspace) and clawsup's state_dir
# (set_model / set_timezone overrides, incident log): both outlive the container. Name
# them (-v NAME:PATH) or a re-created container starts from empty ones.
VOLUME ["/home/node/.clawdbot", "/var/lib/clawsup"]
EXPOSE 18789

STOPSIGNAL SIGTERM
# `clawsupctl health` fails until the gateway serves (its HTTP liveness probe answered),
# then while it does not. From this image's warm cache it serves 5-9 s after start, so
# the first check, one interval in, usually finds it healthy; the start period covers a
# cold start (29-55 s: a gateway image without the cache, or a uid that cannot use it).
HEALTHCHECK --interval=10s --timeout=10s --retries=3 --start-period=60s \
    CMD ["clawsupctl", "health"]
ENTRYPOINT ["clawsup", "run", "-c", "/etc/clawsup/clawsup.toml"]
# Arguments given to `docker run IMAGE ...` are appended to the ENTRYPOINT: `-c FILE`
# adds an override config whose keys win over the shipped one.
CMD []

# Portcullis: the egress gate for self-hosted AI agents.
#
#   docker build -t portcullis:dev .
#
# The base images, pinned by digest: build arguments, so a registry mirror or a local copy
# can stand in (`--build-arg RUNTIME_IMAGE=...`); the defaults build exactly the
# published image. tests/it/compose.rs builds the final stage with RUNTIME_IMAGE=scratch.
#   BUILD_IMAGE    the Rust toolchain on Debian
#   RUNTIME_IMAGE  distroless static (no shell, no package manager, CA certificates and
#                  /etc/passwd only): the gate needs none of it (its TLS roots are built in,
#                  its user is numeric)
ARG BUILD_IMAGE=rust:1.95-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab

# Builder. The binary is built by scripts/build-static.sh, the same script CI's container
# test runs, so the image ships exactly the binary the tests exercised: glibc linked
# statically (the gate never uses the system resolver or NSS, so there is nothing to load
# at run time).
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY scripts/build-static.sh scripts/build-static.sh
COPY portcullis.toml allowlist.toml ./
COPY blocklists blocklists
COPY scripts/container-config.sh scripts/container-config.sh
RUN ./scripts/build-static.sh > /tmp/binary-path \
    && install -D -m 0755 "$(cat /tmp/binary-path)" /out/usr/local/bin/portcullis \
    && install -d -m 0755 /out/etc/portcullis/blocklists \
    && ./scripts/container-config.sh portcullis.toml > /out/etc/portcullis/portcullis.toml \
    && install -m 0644 allowlist.toml /out/etc/portcullis/allowlist.toml \
    && install -m 0644 blocklists/local.txt /out/etc/portcullis/blocklists/local.txt \
    && /out/usr/local/bin/portcullis config check /out/etc/portcullis/portcullis.toml \
    && install -d -m 0700 -o 65534 -g 65534 /out/var/cache/portcullis

# Final stage: RUNTIME_IMAGE (distroless static by default, pinned above).
FROM ${RUNTIME_IMAGE}
COPY --from=build /out/ /
# nobody:nogroup. The root filesystem can be read-only: the gate writes only to
# PORTCULLIS_CACHE_DIR (mount a volume or tmpfs there).
USER 65534:65534
# The baked-in configuration is the shipped default with the container's listeners
# (0.0.0.0:53, :3128, :9953) and cache directory (scripts/container-config.sh). Override
# it by mounting a directory over /etc/portcullis (the gate reloads when its files
# change), or with PORTCULLIS_* variables. Only the config path is set here, so a
# mounted file's settings are never silently overridden. Logs are JSON (stderr is no
# terminal).
ENV PORTCULLIS_CONFIG=/etc/portcullis/portcullis.toml
# Port 53 as non-root with no capabilities: run with
# `--sysctl net.ipv4.ip_unprivileged_port_start=53` (docker run / compose `sysctls:`),
# which is per network namespace and so touches only this container.
EXPOSE 53/udp 53/tcp 3128/tcp 9953/tcp
VOLUME ["/var/cache/portcullis"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/portcullis", "health"]
ENTRYPOINT ["/usr/local/bin/portcullis"]

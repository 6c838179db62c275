# loam: CSI driver for node-local storage.
# Build: podman build -t loam:0.1.0 .   (or docker build)
# The builder is pinned to the project's toolchain; the runtime holds loam and what its pool kinds run.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: built once against empty stand-ins for loam's own crates, so
# source edits neither refetch nor rebuild them (the build script's CSI bindings are cached too).
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY crates/loam-sys/Cargo.toml crates/loam-sys/Cargo.toml
COPY crates/loam-engine/Cargo.toml crates/loam-engine/Cargo.toml
RUN mkdir -p src crates/loam-sys/src crates/loam-engine/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs crates/loam-sys/src/lib.rs crates/loam-engine/src/lib.rs \
 && cargo build --release --locked --bin loam
COPY crates crates
COPY src src
# COPY keeps the sources' own mtimes, which can be older than the stand-ins' build: touch so cargo rebuilds
# loam's crates, and refuse to ship the stand-in binary should it not.
RUN touch src/main.rs src/lib.rs crates/*/src/lib.rs \
 && cargo build --release --locked --bin loam \
 && strip target/release/loam \
 && target/release/loam --version | grep '^loam '

FROM docker.io/library/debian:bookworm-slim
# Exactly what the pool kinds run: mkfs.ext4 (e2fsprogs) and mkfs.xfs (xfsprogs) to format image volumes,
# blkid (util-linux) to see whether one already holds a filesystem. Loop devices need no tool (ioctls).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends e2fsprogs xfsprogs util-linux \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/loam /usr/bin/loam
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="loam" \
      org.opencontainers.image.description="CSI driver for node-local storage" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/loam-csi/loam"
ENTRYPOINT ["/usr/bin/loam"]
CMD ["serve"]

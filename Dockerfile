# The one Callguard image: the operator (`callguard operator`) and the data-plane pods it creates
# (`callguard serve ...`) run from it.
#   docker build -t REGISTRY/callguard:0.1.0 .
#
# Both base images are pinned by the digest of their multi-platform image index, so a rebuild
# starts from the same bytes until the pin is moved on purpose. The digests were not pulled here;
# they were read on 2026-12-06 from public sources that state them for these exact tags:
# - rust:1.95-bookworm@sha256:6258907a...: BuildKit logs in public repositories that resolve
#   `docker.io/library/rust:1.95-bookworm` to this digest (on amd64 and arm64 hosts alike), and
#   Dockerfiles that pin `rust:1.95-bookworm@sha256:6258907a...` (one dated 2026-05-27).
# - debian:bookworm-slim@sha256:3783cc01...: docker-library/repo-info,
#   repos/debian/remote/bookworm-20260918-slim.md at commit 43a0ed1e9fb9a76535ddf0c2040fb9223eac2b15
#   (the index of the 2026-09-18 bookworm-slim build), and BuildKit logs in public repositories
#   that resolve `docker.io/library/debian:bookworm-slim` to this digest.
# To move a pin: `docker buildx imagetools inspect IMAGE:TAG` prints the tag's current index digest.

FROM rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS builder
# Callguard signs through OpenSSL (the openssl crate): its headers and pkg-config to build.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Stripped: the workspace's [profile.release] keeps line tables for local builds and backtraces;
# the image ships the binary without symbols or debug info.
RUN CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --bin callguard

FROM debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251
# The OpenSSL the binary links against, and the CA bundle for TLS to the Kubernetes API server.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /src/target/release/callguard /usr/local/bin/callguard
# Numeric, so that Kubernetes' runAsNonRoot can verify it without a passwd entry.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/callguard"]

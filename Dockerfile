# The one Callguard image: the operator (`callguard operator`) and the data-plane pods it creates
# (`callguard serve ...`) run from it.
#   docker build -t REGISTRY/callguard:0.1.0 .

FROM rust:1.95-bookworm AS builder
# Callguard signs through OpenSSL (the openssl crate): its headers and pkg-config to build.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin callguard

FROM debian:bookworm-slim
# The OpenSSL the binary links against, and the CA bundle for TLS to the Kubernetes API server.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /src/target/release/callguard /usr/local/bin/callguard
# Numeric, so that Kubernetes' runAsNonRoot can verify it without a passwd entry.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/callguard"]

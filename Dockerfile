# syntax=docker/dockerfile:1
# Build stage: a static (musl) release binary; cargo's registry and target are cached.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin cognito-unauth-controller \
 && cp target/x86_64-unknown-linux-musl/release/cognito-unauth-controller /cognito-unauth-controller

# Final stage: the binary and CA certificates, nothing else; no shell; non-root.
FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /cognito-unauth-controller /cognito-unauth-controller
USER 65532:65532
ENTRYPOINT ["/cognito-unauth-controller"]

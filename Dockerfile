# syntax=docker/dockerfile:1
#
# Two stages, Linkerd-style: a cached cargo build, then FROM scratch with only the static
# binary and CA certificates, a non-root UID and no shell.
#
# With a container engine:   docker build -t cognito-unauth-controller .
# Without one (CI, here):    testbed/image.sh builds the binary on the host and gives it to
#                            buildah as the named context "build", in place of stage 1.

FROM rust:1.95-bookworm AS build
# musl: a static binary whose DNS resolver needs no NSS libraries (scratch has none).
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update && apt-get install -y --no-install-recommends musl-tools
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --profile image --target x86_64-unknown-linux-musl --bin cognito-unauth-controller \
 && mkdir -p /out /out/etc/ssl/certs \
 && cp target/x86_64-unknown-linux-musl/image/cognito-unauth-controller /out/ \
 && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/

FROM scratch AS final
COPY --from=build /out/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/cognito-unauth-controller /cognito-unauth-controller
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/cognito-unauth-controller"]

# syntax=docker/dockerfile:1
#
# Two stages, Linkerd-style: a cached cargo build, then FROM scratch with only the static
# binary, CA certificates and the SBOM, a non-root UID and no shell.
#
# With a container engine:   docker buildx build --platform linux/amd64,linux/arm64 \
#                              --build-arg VERSION=... --build-arg REVISION=$(git rev-parse HEAD) \
#                              --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct -- Cargo.toml Cargo.lock rust-toolchain.toml) .
#                            (the build stage runs on each target platform: natively on
#                            an arm64 builder, under binfmt/qemu elsewhere)
# Without one (CI, here):    testbed/image.sh (amd64) and testbed/image-arm64.sh build the
#                            binary on the host and give it to buildah as the named context
#                            "build", in place of stage 1; image.sh passes the same ARGs.

# The tag for people, the digest for pulls: a tag is moved by every Debian or Rust point
# release. Digest of the multi-arch index of rust:1.95-bookworm, taken from public build
# records that pulled it (it could not be resolved against the registry from here);
# re-check it with `docker buildx imagetools inspect rust:1.95-bookworm` when bumping.
FROM rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS build
ARG TARGETARCH
# musl: a static binary whose DNS resolver needs no NSS libraries (scratch has none).
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools
WORKDIR /src
# The toolchain file first: rustup installs its pinned toolchain and targets once, cached.
COPY rust-toolchain.toml ./
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH '$TARGETARCH' (amd64 or arm64)" >&2; exit 1 ;; \
    esac > /musl-target \
 && rustup target add "$(cat /musl-target)" \
 && cargo install --locked --root /opt/cyclonedx cargo-cyclonedx@0.5.9
COPY . .
# The SBOM as testbed/sbom.sh makes it: the crates linked for this target, CycloneDX 1.5.
# Reproducible: no incremental state, the source, cargo-home and target paths remapped out
# of the binary, and SOURCE_DATE_EPOCH for anything that stamps a time (testbed/reproducible.sh).
ARG SOURCE_DATE_EPOCH=0
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    t=$(cat /musl-target) \
 && export SOURCE_DATE_EPOCH CARGO_INCREMENTAL=0 \
      RUSTFLAGS="--remap-path-prefix=/usr/local/cargo=/cargo --remap-path-prefix=/src/target=/target" \
      CFLAGS="-ffile-prefix-map=/usr/local/cargo=/cargo -ffile-prefix-map=/src/target=/target" \
 && cargo build --locked --profile image --target "$t" --bin cognito-unauth-controller \
 && mkdir -p /out /out/etc/ssl/certs \
 && cp "target/$t/image/cognito-unauth-controller" /out/ \
 && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ \
 && /opt/cyclonedx/bin/cargo-cyclonedx cyclonedx --quiet --format json --spec-version 1.5 \
      --target "$t" --no-build-deps --override-filename sbom \
 && mv sbom.json /out/sbom.cdx.json

FROM scratch AS final
# OCI labels (image-spec annotations.md). VERSION and REVISION come from the build:
# testbed/image.sh passes Cargo.toml's version and `git rev-parse HEAD`.
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="cognito-unauth-controller" \
      org.opencontainers.image.description="Kubernetes controller that keeps Amazon Cognito guest (unauthenticated) credentials fresh in a Secret" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      io.kubecred.sbom="/sbom.cdx.json"
COPY --from=build /out/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/sbom.cdx.json /sbom.cdx.json
COPY --from=build /out/cognito-unauth-controller /cognito-unauth-controller
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/cognito-unauth-controller"]

# Multi-stage build: compile with the full toolchain, ship only the binary on a distroless base that
# runs as a non-root user (uid 10001, matching k8s/deployment.yaml).
FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin brx-sync

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/brx-sync /usr/local/bin/brx-sync
USER 10001:10001
EXPOSE 50051 9090 9091
ENTRYPOINT ["/usr/local/bin/brx-sync"]
CMD ["serve"]

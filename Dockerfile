# syntax=docker/dockerfile:1
# payg: multi-stage image. Build: docker build -t payg .
# Run with docker-compose.yml (PostgreSQL + Redis + payg).

FROM rust:1-bookworm AS builder
WORKDIR /app
COPY . .
# Cache mounts keep the registry and target dir between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/app/target \
    cargo build --release --locked --bin payg \
 && install -m 0755 target/release/payg /usr/local/bin/payg

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 payg \
 && useradd --system --uid 10001 --gid payg --home-dir /nonexistent --shell /usr/sbin/nologin payg
COPY --from=builder /usr/local/bin/payg /usr/local/bin/payg
ENV PAYG_BIND=0.0.0.0:8080 \
    RUST_LOG=info
USER payg:payg
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/payg"]
CMD ["serve"]

# The Tally image: `tally serve` as a non-root user, its data directory a volume. Used by
# deploy/compose.yaml; build it alone with `docker build -t tally .` from the repository root.
# It holds no PostgreSQL programs, so DATABASE_URL must be set (without it, Tally would try to
# start a PostgreSQL of its own and fail).

# --- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Compile the dependencies against empty sources first: this layer is reused until a
# Cargo.toml or Cargo.lock change, so a change to Tally's code rebuilds Tally alone. Every
# member of the workspace needs its manifest and a target for Cargo to read the workspace.
COPY Cargo.toml Cargo.lock ./
COPY crates/service/Cargo.toml crates/service/
COPY crates/cli/Cargo.toml crates/cli/
COPY crates/postgres/Cargo.toml crates/postgres/
COPY crates/load/Cargo.toml crates/load/
COPY xtask/Cargo.toml xtask/
RUN for lib in service postgres load; do \
      mkdir -p crates/$lib/src && touch crates/$lib/src/lib.rs; \
    done \
 && mkdir -p crates/cli/src xtask/src \
 && echo 'fn main() {}' > crates/cli/src/main.rs \
 && echo 'fn main() {}' > xtask/src/main.rs \
 && cargo build --release --locked --package tally-cli \
 && rm -rf crates/*/src

# The crates' sources, with the migrations the service embeds (crates/service/migrations),
# and the runbooks it serves at /runbook (docs/operations.md).
COPY crates ./crates
COPY docs/operations.md ./docs/
# COPY keeps the files' modification times, which may be older than the empty sources
# above; touching them makes Cargo rebuild Tally instead of keeping the empty build.
RUN touch crates/*/src/lib.rs crates/cli/src/main.rs \
 && cargo build --release --locked --package tally-cli

# --- run ---------------------------------------------------------------------------------
# The same Debian release as the builder, so the binary finds the glibc it was linked
# against. Tally needs nothing else but CA certificates.
FROM debian:bookworm-slim

# Unpinned: a pinned Debian version disappears from the archive at its next security update.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed uid, so that volume ownership stays right across rebuilds and a platform that
# requires a non-root numeric user (runAsNonRoot) accepts the image.
RUN groupadd --system --gid 10001 tally \
 && useradd --system --uid 10001 --gid tally --home-dir /var/lib/tally --no-create-home \
      --shell /usr/sbin/nologin tally \
 && mkdir -p /var/lib/tally \
 && chown tally:tally /var/lib/tally

COPY --from=builder /src/target/release/tally /usr/local/bin/tally

# The node id and the journal live in /var/lib/tally: they must outlive the container (a
# node replays its journal at start), and each node needs a volume of its own. A new named
# volume takes this directory's owner, so the tally user can write to it.
ENV TALLY_DATA_DIR=/var/lib/tally \
    TALLY_LISTEN=0.0.0.0:3333
VOLUME /var/lib/tally
WORKDIR /var/lib/tally
USER 10001:10001
EXPOSE 3333

# Liveness without an HTTP client in the image: bash asks GET /health over /dev/tcp. It
# checks /health, not /ready: a node whose database is away is alive and must not be
# restarted (it keeps its increments for when the database returns); /ready is for the
# load balancer. crates/cli/tests/it/deploy.rs runs this command against a real node.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/3333 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

# Exec form: tally is PID 1 and receives SIGTERM itself, to drain and flush before exiting.
ENTRYPOINT ["tally"]
CMD ["serve"]

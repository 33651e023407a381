# One image with the three programs; compose and Kubernetes choose the command.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home skeelo
COPY --from=build /src/target/release/skeelo-workers /src/target/release/skeelo-ops /src/target/release/skeelo-sim /src/target/release/skeelo-console /usr/local/bin/
USER 10001
ENTRYPOINT ["skeelo-workers"]

# chatd in a container: the server listens on 0.0.0.0:7878 and keeps its database in /data.
#   docker build -t chatd .
#   docker run -p 7878:7878 -v chatd-data:/data chatd
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin chatd

FROM debian:bookworm-slim
RUN useradd --system --home-dir /data --create-home chatd
COPY --from=build /src/target/release/chatd /usr/local/bin/chatd
USER chatd
VOLUME /data
EXPOSE 7878
STOPSIGNAL SIGTERM
ENTRYPOINT ["chatd", "--listen", "0.0.0.0:7878", "--db", "/data/chatd.redb"]

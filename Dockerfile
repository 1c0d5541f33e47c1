# chatd in a container: the server listens on 0.0.0.0:7878 and keeps its database in /data.
#   docker build -t chatd .
#   docker run -p 7878:7878 -v chatd-data:/data chatd
# Every option is an environment variable (CHATD_LISTEN, CHATD_DB, CHATD_TLS_LISTEN,
# CHATD_TLS_GENERATE, CHATD_ADMIN, CHATD_METRICS_LISTEN, ...; see `chatd --help`), so nothing needs
# a command line: docker run -e CHATD_TLS_LISTEN=0.0.0.0:7879 -e CHATD_TLS_GENERATE=1 ... chatd
#
# BUILDER and RUNTIME name the base images. Where no image registry is reachable, scripts/docker-smoke
# makes both from Debian's archive (debootstrap): a RUNTIME base, and a BUILDER that holds a chatd
# built on the host in /prebuilt/chatd, which the build stage then uses instead of compiling.
ARG BUILDER=rust:1-bookworm
ARG RUNTIME=debian:bookworm-slim

FROM ${BUILDER} AS build
WORKDIR /src
COPY . .
RUN if [ -x /prebuilt/chatd ]; then \
        mkdir -p target/release && cp /prebuilt/chatd target/release/chatd; \
    else \
        cargo build --release --locked --bin chatd; \
    fi

FROM ${RUNTIME}
# A system user whose home is the data volume, created without /etc/skel's shell files: the volume
# holds the database and, with CHATD_TLS_GENERATE, its certificate, and nothing else.
RUN useradd --system --no-create-home --home-dir /data --shell /usr/sbin/nologin chatd \
    && mkdir -p /data && chown chatd:chatd /data && chmod 0750 /data
COPY --from=build /src/target/release/chatd /usr/local/bin/chatd
USER chatd
VOLUME /data
ENV CHATD_LISTEN=0.0.0.0:7878 \
    CHATD_DB=/data/chatd.redb
EXPOSE 7878
# `chatd health` checks the listener CHATD_LISTEN names (or the TLS one, with CHATD_NO_PLAIN).
HEALTHCHECK --interval=10s --timeout=6s --start-period=5s --retries=3 CMD ["chatd", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["chatd"]

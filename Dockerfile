# gotthard: build on Debian 12, run on Debian 12 slim as a non-root user.
FROM debian:12 AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config libevent-dev libssl-dev libcjson-dev \
        libhiredis-dev libjwt-dev libmaxminddb-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY gateway gateway
COPY include include
COPY plugins plugins
COPY tools tools
COPY tests tests
COPY conf conf
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DGW_WERROR=ON \
    && cmake --build build -j"$(nproc)" --target gotthard gotthard-keygen gotthard-mock-backend \
       gotthard-mmdb gotthard-usage gw_example site_mmdb

FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        libevent-2.1-7 libevent-core-2.1-7 libevent-extra-2.1-7 libevent-openssl-2.1-7 \
        libevent-pthreads-2.1-7 libssl3 libcjson1 libhiredis0.14 libjwt0 libmaxminddb0 \
        ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin gotthard
COPY --from=build /src/build/gateway/gotthard /usr/local/bin/gotthard
COPY --from=build /src/build/tools/keygen/gotthard-keygen /usr/local/bin/gotthard-keygen
COPY --from=build /src/build/tools/mock_backend/gotthard-mock-backend /usr/local/bin/gotthard-mock-backend
COPY --from=build /src/build/tools/mmdb/gotthard-mmdb /usr/local/bin/gotthard-mmdb
COPY --from=build /src/build/tools/usage/gotthard-usage /usr/local/bin/gotthard-usage
COPY --from=build /src/build/plugins/example/gw_example.so /usr/local/lib/gotthard/gw_example.so
COPY conf /etc/gotthard
# The site GeoIP database is built from conf/geoip/site.csv; the demo config names it by its
# path in a build tree, here it lives beside the config.
COPY --from=build /src/build/conf/geoip/site.mmdb /etc/gotthard/geoip/site.mmdb
RUN sed -i 's#build-release/conf/geoip/site.mmdb#/etc/gotthard/geoip/site.mmdb#' /etc/gotthard/demo.json
USER gotthard
EXPOSE 8080 9090
# The admin listener must be reachable from inside the container (127.0.0.1:9090 in the demo).
HEALTHCHECK --interval=10s --timeout=2s --retries=3 CMD curl -fsS http://127.0.0.1:9090/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/gotthard"]
CMD ["-c", "/etc/gotthard/demo.json"]

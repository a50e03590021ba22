# The unifork image: a KVM host's worker (and Flower), as the kvm_host role
# installs it: Debian 12, the same packages, the project in /opt/unifork.
#   docker compose build       (docker-compose.yml runs it)
FROM debian:12

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        qemu-system-x86 musl-tools gcc make libc6-dev python3-venv libssl-dev util-linux \
        ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# The same layout as the roles: the source in {{prefix}}/src, its venv in
# {{prefix}}/venv, the guest and the native library built in the source.
WORKDIR /opt/unifork/src
COPY . .
RUN make -s guest native \
 && python3 -m venv /opt/unifork/venv \
 && /opt/unifork/venv/bin/pip install -q --disable-pip-version-check \
        -e . --config-settings editable_mode=compat \
 && /opt/unifork/venv/bin/pip install -q --disable-pip-version-check flower

ENV PATH=/opt/unifork/venv/bin:$PATH
ENTRYPOINT ["/opt/unifork/venv/bin/unifork"]
CMD ["worker"]

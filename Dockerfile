# pussh-registry: an OCI distribution registry whose storage is the host's containerd.
#
#   docker build --network host -t pussh-registry:0.1.0 .     (the build reaches PyPI)
#   behind a TLS-inspecting proxy, hand pip the CA bundle as a build secret:
#   docker build --network host --secret id=pipcert,src=/etc/ssl/certs/ca-certificates.crt -t ... .
#   (and --build-arg PIP_INDEX_URL=... for a mirror)
#   echo "PUSSH_REGISTRY_TOKEN=$(openssl rand -hex 32)" | docker run -d -p 5000:5000 --env-file /dev/stdin \
#     --group-add "$(stat -c %g /run/containerd/containerd.sock)" \
#     -v /run/containerd/containerd.sock:/run/containerd/containerd.sock pussh-registry:0.1.0
#
# Options come as arguments after the image name (`--listen 127.0.0.1:0 --namespace moby`) or as
# PUSSH_REGISTRY_* variables; the token only by variable or file (PUSSH_REGISTRY_TOKEN, --token-file).
# It runs as an unprivileged user (65532) that can reach only what is mounted: --group-add gives it the
# containerd socket's group (the socket is mode 0660), which is all it needs. (That socket is still
# root-equivalent on the host: keep the registry on loopback or behind the token.) Mounting the
# host's content directory read-only at the same path
# (-v /var/lib/containerd/io.containerd.content.v1.content:...:ro) lets blob GETs read files directly
# instead of through gRPC.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml /src/
COPY ctrd /src/ctrd
COPY oci /src/oci
COPY proto /src/proto
COPY registry /src/registry
# Only what the registry imports (the client's SSH/UI dependencies stay out of the image), with the
# versions pyproject pins; a venv, because a distribution's own python3 refuses system-wide pip.
RUN --mount=type=secret,id=pipcert,required=false \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
 && python3 -m venv /opt/pussh \
 && python3 -c "import tomllib; deps = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if d.split('>')[0].split('=')[0].strip() in ('aiohttp', 'grpclib', 'protobuf')))" > /tmp/requirements.txt \
 && /opt/pussh/bin/pip install -q --index-url "$PIP_INDEX_URL" -r /tmp/requirements.txt \
 && /opt/pussh/bin/pip install -q --index-url "$PIP_INDEX_URL" --no-deps /src \
 && rm -rf /src /tmp/requirements.txt /root/.cache \
 && /opt/pussh/bin/pussh-registry --help > /dev/null

ENV PUSSH_REGISTRY_LISTEN=0.0.0.0:5000
# The registry makes no TLS connections, but importing aiohttp builds a verifying SSL context, which
# loads the whole CA bundle: 50-90 ms of every start (measured in this image), when pussh waits for it.
ENV SSL_CERT_FILE=/dev/null
EXPOSE 5000
STOPSIGNAL SIGTERM
USER 65532:65532
ENTRYPOINT ["/opt/pussh/bin/pussh-registry"]

"""The main job, end to end on a throwaway pair of hosts: a local Docker host and a "remote" server
(its own network and mount namespaces, containerd, dockerd and sshd), then

    pussh demo/app:1 remote            # first push: every layer
    pussh demo/app:1-v2 remote         # a rebuild with one changed layer: only that layer
    ssh remote docker run demo/app:1-v2

Everything is torn down at the end. Run as root, after scripts/setup.sh (scripts/demo.sh does both).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the test bed lives in the repository, not in the installed package

from pussh import __version__
from testbed import LocalHost, RemoteHost, build_registry_image, build_test_image_pair

REGISTRY_IMAGE = f"pussh-registry:{__version__}"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def pussh(local: LocalHost, remote: RemoteHost, image: str) -> None:
    argv = [str(REPO / ".venv/bin/pussh"), "-F", remote.ssh_config, image, remote.alias]
    print("$", shlex.join(["pussh", *argv[1:]]), flush=True)
    subprocess.run(argv, env={**os.environ, **local.env}, check=True)


def main() -> int:
    with LocalHost() as local, RemoteHost() as remote:
        step(f"local Docker at {local.docker_host}; server '{remote.alias}' at {remote.address} over SSH")
        step("building the registry image locally (base from debootstrap: nothing can be pulled here)")
        build_registry_image(local, REGISTRY_IMAGE)
        step("building demo/app:1 (busybox + 3 data layers) and demo/app:1-v2 (last layer changed)")
        ref, ref_v2 = build_test_image_pair(local, "demo/app:1", [60, 40, 20])
        step("first push: the server has nothing yet (the registry image goes along once)")
        pussh(local, remote, ref)
        step("same image again: nothing to send")
        pussh(local, remote, ref)
        step("the rebuilt image: only the changed layer crosses the link")
        pussh(local, remote, ref_v2)
        step("running it on the server, with no pull")
        out = remote.ssh("docker", "run", "--rm", "--pull", "never", "--network", "none", ref_v2,
                         "sh", "-c", "echo hello from the server; ls /data")
        print(out.stdout, end="")
        step("done; tearing the hosts down")
    return 0


if __name__ == "__main__":
    sys.exit(main())

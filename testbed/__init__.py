"""Real-daemon test bed for pussh: a local Docker host and "remote" Docker hosts reached over real SSH.

    from testbed import LocalHost, RemoteHost, build_test_image_pair
    with LocalHost() as local, RemoteHost(store="classic", rate="200mbit", delay="10ms") as remote:
        ref, ref_v2 = build_test_image_pair(local, "bench/app:1", [150, 100, 50])  # v2: last layer differs
        remote.ssh("docker", "info")          # ssh -F remote.ssh_config remote.alias -- 'docker info'
        remote.run("ctr", "version")          # inside its namespaces, no ssh
        with remote.shaped(rate="100mbit"): ...

LocalHost(store): docker_host, containerd_socket, content_root, env, docker(), info(), diff_ids(), has_image(),
    kill_containerd(), restart_containerd(), restart_dockerd(), stop().
RemoteHost(store, rate=, delay=): address, alias, ssh_config, ssh_key, known_hosts, host_key_pub, run(), docker(),
    ctr(), ssh(), add_user(), shape()/shaped()/unshape(), link_bytes(), block_traffic()/unblock_traffic(), the daemon
    controls above, stop(); *_outside attributes are the remote's sockets/content store seen from here.
Each instance takes a unique slot N (fcntl lock in /run/pussh-testbed), so concurrent runs never collide; a
crashed run's leftovers are swept by the next run that takes its slot. `python -m testbed up` to try by hand.
RemoteHost("none") is a Kubernetes-like node: containerd with CRI, no dockerd (docker() fails; ctr() runs
ctr in namespace k8s.io).
Not isolated from the remote: /tmp, /root, /home and /etc (except docker, containerd, sudoers.d, hosts).
"""
from ._proc import TestbedError
from .images import (build_python_base, build_registry_image, build_test_image, build_test_image_pair,
                     build_test_images)
from .local import LocalHost, Store
from .remote import RemoteHost, RemoteUser

__all__ = ["LocalHost", "RemoteHost", "RemoteUser", "Store", "TestbedError", "build_python_base",
           "build_registry_image", "build_test_image", "build_test_image_pair", "build_test_images"]

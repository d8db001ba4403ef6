"""`python -m core.train.loopback <launcher module> <args...>`: run torchrun (torch.distributed.run) or accelerate
launch with its c10d store listening on 127.0.0.1 only.

torch's TCPStore server binds every interface whatever host it is given; the store is unauthenticated and the ranks
exchange pickles through the process group (all_gather_object unpickles what it receives). Given a socket already
bound to loopback (TCPStore's `master_listen_fd`), it listens there instead. This wrapper hands one to every store
server created for a loopback host in the launcher process; the ranks' own sockets are kept on loopback by the
environment (core.train.launchers.one_node_env). Multi-node runs never go through here.
"""
from __future__ import annotations

import runpy
import socket
import sys

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "ip6-localhost"})
_PARAMETERS = ("host_name", "port", "world_size", "is_master", "timeout", "wait_for_workers", "multi_tenant",
               "master_listen_fd", "use_libuv")


def loopback_listener(port: int) -> int:
    """A listening TCP socket on 127.0.0.1:port (0: any free port); its file descriptor, which the store then owns."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(port)))
    sock.listen(socket.SOMAXCONN)
    return sock.detach()


def install() -> None:
    """Replace torch.distributed's TCPStore, everywhere the launcher's modules name it, by one that listens on loopback."""
    import torch.distributed as dist
    import torch.distributed.elastic.rendezvous.c10d_rendezvous_backend  # noqa: F401 - they import TCPStore by name
    import torch.distributed.elastic.rendezvous.static_tcp_rendezvous  # noqa: F401
    import torch.distributed.elastic.utils.distributed  # noqa: F401
    import torch.distributed.rendezvous  # noqa: F401

    base = dist.TCPStore
    if getattr(base, "workbench_loopback", False):
        return

    class LoopbackTCPStore(base):
        workbench_loopback = True

        def __init__(self, *args, **kwargs):
            kwargs.update(zip(_PARAMETERS, args))
            host = str(kwargs.get("host_name", ""))
            if kwargs.get("is_master") and kwargs.get("master_listen_fd") is None and host in LOOPBACK_HOSTS:
                kwargs["master_listen_fd"] = loopback_listener(int(kwargs.get("port") or 0))
            super().__init__(**kwargs)

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("torch.distributed") and getattr(module, "TCPStore", None) is base:
            module.TCPStore = LoopbackTCPStore


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m core.train.loopback <launcher module> <its arguments...>")
    install()
    sys.argv = [args[0], *args[1:]]
    runpy.run_module(args[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

"""Programs the benchmarks run."""

import otpy


class Idle(otpy.Program):
    """Does nothing; ready as soon as it is set up."""

    def forward(self, **inputs):
        return inputs


class SocketReady(otpy.Program):
    """Sends "PID [MARK]" as one datagram to ``$BENCH_READY_SOCK`` in setup (the peers'
    readiness signal; ``args.mark`` names the program version, for reconfigurations)."""

    def setup(self, args, config):
        import os
        import socket

        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(" ".join([str(os.getpid()), *([args["mark"]] if "mark" in args else [])]).encode(),
                 os.environ["BENCH_READY_SOCK"])
        s.close()

    def forward(self, **inputs):
        return inputs

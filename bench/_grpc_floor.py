"""A process that holds what an idle agent holds of gRPC and does nothing else: the floor
under any agent built on grpcio (bench/agent_idle_bench.py --grpc-floor).

    python bench/_grpc_floor.py ADDRESS            # grpc imported, one channel, idle
    python bench/_grpc_floor.py --no-grpc          # the control: asyncio only, no grpc

It opens a grpc.aio channel to ADDRESS (the daemon), makes one Health/Check so the channel
is connected, prints "open" and sends nothing more. On a line on stdin it closes the
channel (grpc stays imported and initialized) and prints "closed"; at end of stdin it exits.
With --no-grpc it never imports grpc: an asyncio loop waiting on stdin, the same shape.
"""

from __future__ import annotations

import asyncio
import sys


def say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


async def with_grpc(address: str) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    channel = grpc.aio.insecure_channel(address)
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    say("open")
    await reader.readline()
    await channel.close()
    say("closed")
    await reader.read()  # until stdin ends


async def without_grpc() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    say("open")
    await reader.read()


def main() -> None:
    if sys.argv[1:] == ["--no-grpc"]:
        asyncio.run(without_grpc())
    else:
        asyncio.run(with_grpc(sys.argv[1]))


if __name__ == "__main__":
    main()

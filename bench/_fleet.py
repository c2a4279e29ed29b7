"""A throwaway fleet for benchmarks: one real controller and real agent processes on loopback.

``running_fleet`` starts ``python -m controller.cli.main serve`` in a data dir under ``workdir``,
creates a bootstrap token, starts each agent (``python -m agent.cli run``), imports a model, assigns
it to every agent and waits until each agent's own status says it serves that model's sha256. The
processes are always stopped on the way out (SIGTERM, then SIGKILL), also on Ctrl-C or SIGTERM.

Starting, watching and stopping the processes is ``simulator.processes`` (shared with ``make demo``
and the e2e tests); what is here is the bench's own: the fleet context manager, the bare gRPC echo
reference and a serving agent that does no work (the floor of the batching budget), per-process CPU
readings and SIGTERM-as-interrupt handling.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from agent.client import AgentClient
from controller.client import AdminClient
from simulator.processes import (
    AGENT_ENTRY,
    Proc,
    ProcessError,
    start_agent,
    start_controller,
    terminate_all,
    wait_until,
)

START_TIMEOUT_S = 60.0
#: The bare gRPC method ``echo_server`` serves (raw bytes in, the same bytes out).
ECHO_METHOD = "/edgefleet.bench.Echo/Echo"
#: The same echo on a bidirectional stream: every message answered with itself, in order.
ECHO_STREAM_METHOD = "/edgefleet.bench.Echo/EchoStream"
#: What ``segment_floor_server`` serves: the product's own stream method, so the product's client
#: (``StreamPool`` through the real stub) calls it as it calls a serving agent.
SEGMENT_STREAM_SERVICE, SEGMENT_STREAM_METHOD = "edgefleet.v1.SegmentService", "RunSegments"


class FleetError(RuntimeError):
    """The fleet could not be brought up; the message carries the relevant process log."""


@dataclass
class Fleet:
    workdir: Path
    controller: str
    agents: list[str]  # Infer addresses, one per agent, HOST:PORT
    device_ids: list[str]
    model_name: str
    sha256: str
    procs: list[Proc] = field(default_factory=list)

    def logs(self) -> str:
        return _logs(self.procs)


def _logs(procs: Sequence[Proc]) -> str:
    return "\n\n".join(f"--- {p.name} ---\n{p.log()}" for p in procs)


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used so far, all threads (Linux /proc); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Make SIGTERM unwind like Ctrl-C so the ``finally`` that stops the children always runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _managed(procs: list[Proc]) -> Iterator[None]:
    """Stop ``procs`` on the way out, whatever happens; a ProcessError becomes a FleetError with logs.

    A second Ctrl-C or SIGTERM during teardown must not leave a child running, so both are held off
    while ``terminate_all`` stops them (agents first: they hold streams to the controller).
    """
    with sigterm_as_interrupt():
        try:
            yield
        except ProcessError as exc:
            raise FleetError(f"{exc}\n\n{_logs(procs)}") from None
        finally:
            in_main = threading.current_thread() is threading.main_thread()
            held = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in held} if in_main else {}
            try:
                terminate_all(procs)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)


@contextlib.contextmanager
def running_fleet(
    workdir: Path,
    model_path: Path,
    *,
    model_name: str = "digits",
    variant: str = "fp32",
    agent_entries: Sequence[Sequence[str]] = (AGENT_ENTRY,),
    hardware: str = "phone-cpu",
    agent_threads: int = 1,
    log_level: str = "warning",
    converge_timeout: float = 60.0,
) -> Iterator[Fleet]:
    """A controller plus one agent per ``agent_entries`` item, each serving ``model_path``; torn down."""
    procs: list[Proc] = []
    with _managed(procs):
        _, controller = start_controller(
            workdir / "controller",
            0,
            heartbeat=None,
            log_level=log_level,
            timeout=START_TIMEOUT_S,
            registry=procs,
        )
        with AdminClient(controller) as admin:
            token = admin.create_token(ttl_s=3600, uses=len(agent_entries), description="bench").token
            device_ids = [f"bench-{i + 1}" for i in range(len(agent_entries))]
            addresses = [
                start_agent(
                    controller,
                    workdir / device_id,
                    hardware,
                    token=token,
                    device_id=device_id,
                    threads=agent_threads,
                    log_level=log_level,
                    entry=entry,
                    timeout=START_TIMEOUT_S,
                    registry=procs,
                )[1]
                for device_id, entry in zip(device_ids, agent_entries, strict=True)
            ]
            model = admin.import_model(model_path, name=model_name, variant=variant)
            found = model.variant(variant)
            assert found is not None, model
            sha256 = found.sha256
            for device_id in device_ids:
                wait_until(
                    lambda d=device_id: admin.get_device(d),
                    timeout=converge_timeout,
                    what=f"{device_id} to enroll",
                )
                admin.assign(device_id, model_name, variant)

        for address, device_id in zip(addresses, device_ids, strict=True):
            with AgentClient(address, timeout_s=5.0) as client:
                wait_until(
                    lambda c=client: c.status().reported.active_sha256 == sha256,
                    timeout=converge_timeout,
                    what=f"{device_id} to serve {sha256[:12]}",
                    interval=0.1,
                )
        yield Fleet(workdir, controller, addresses, device_ids, model_name, sha256, procs)


@contextlib.contextmanager
def echo_server() -> Iterator[tuple[str, int]]:
    """A bare ``grpc.aio`` server in a child process answering ``ECHO_METHOD`` with the request bytes.

    It does no work at all, so a round trip to it is the floor any Python gRPC service pays on this
    machine (transport, both gRPC stacks, scheduling). Yields (address, pid); always stopped.
    """
    procs: list[Proc] = []
    with _managed(procs):
        proc = Proc("echo", [str(Path(__file__).resolve()), "echo-server"], registry=procs)
        yield proc.wait_for_line("echo listening on", START_TIMEOUT_S).rsplit(" ", 1)[1], proc.pid


@contextlib.contextmanager
def segment_floor_server(reply: bytes) -> Iterator[tuple[str, int]]:
    """A serving agent that does no work: a bare ``grpc.aio`` server in a child process answering
    every ``RunSegments`` message with ``reply`` (a serialised ``SegmentResult``, made once by the
    caller: a real answer of the right size), without parsing the request. Called through the
    product's ``StreamPool`` with the same requests and callers as a real serving agent, its latency
    is what that load costs on this machine before any serving work: the floor of a delay budget.
    Yields (address, pid); always stopped."""
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-floor-") as tmp, _managed(procs):
        path = Path(tmp) / "reply.bin"
        path.write_bytes(reply)
        proc = Proc(
            "segment-floor", [str(Path(__file__).resolve()), "segment-floor", str(path)], registry=procs
        )
        yield proc.wait_for_line("segment-floor listening on", START_TIMEOUT_S).rsplit(" ", 1)[1], proc.pid


def _serve_segment_floor(reply_path: Path) -> None:
    import grpc

    reply = reply_path.read_bytes()

    async def answer(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield reply

    def same(b: bytes) -> bytes:
        return b

    handler = grpc.stream_stream_rpc_method_handler(
        answer, request_deserializer=same, response_serializer=same
    )
    _serve_until_signalled(
        "segment-floor",
        grpc.method_handlers_generic_handler(SEGMENT_STREAM_SERVICE, {SEGMENT_STREAM_METHOD: handler}),
    )


def _serve_echo() -> None:
    import grpc

    async def echo(request: bytes, context: object) -> bytes:
        return request

    async def echo_stream(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request

    service, method = ECHO_METHOD.strip("/").split("/")
    stream_method = ECHO_STREAM_METHOD.rsplit("/", 1)[1]
    _serve_until_signalled(
        "echo",
        grpc.method_handlers_generic_handler(
            service,
            {
                method: grpc.unary_unary_rpc_method_handler(echo),
                stream_method: grpc.stream_stream_rpc_method_handler(echo_stream),
            },
        ),
    )


def _serve_until_signalled(label: str, handler: Any) -> None:
    """Serve ``handler`` (a generic RPC handler) on a free loopback port, print ``LABEL listening on
    HOST:PORT`` (what the parent waits for) and stop on SIGTERM or SIGINT."""
    import asyncio

    import grpc

    from common import limits

    async def main() -> None:
        server = grpc.aio.server(options=limits.GRPC_MESSAGE_OPTIONS)
        server.add_generic_rpc_handlers([handler])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"{label} listening on 127.0.0.1:{port}", flush=True)
        await stop.wait()
        await server.stop(0)

    asyncio.run(main())


if __name__ == "__main__":
    if sys.argv[1:] == ["echo-server"]:
        _serve_echo()
    elif len(sys.argv) == 3 and sys.argv[1] == "segment-floor":
        _serve_segment_floor(Path(sys.argv[2]))
    else:
        sys.exit(f"usage: {sys.argv[0]} echo-server | segment-floor REPLY.bin   (a helper for bench scripts)")

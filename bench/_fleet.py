"""A throwaway fleet for benchmarks: one real controller and real agent processes on loopback.

``running_fleet`` starts ``python -m controller.cli.main serve`` in a data dir under ``workdir``,
creates a bootstrap token, starts each agent (``python -m agent.cli run``), imports a model, assigns
it to every agent and waits until each agent's own status says it serves that model's sha256. The
processes are always stopped on the way out (SIGTERM, then SIGKILL), also on Ctrl-C or SIGTERM.

Deliberately independent of ``tests/`` (same approach as tests/procs.py, no import from it).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TypeVar

from agent.client import AgentClient
from controller.client import AdminClient

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0
#: How an agent is started: ``python <AGENT_ENTRY> run ...``. A/B experiments can pass a launcher
#: script instead (one that patches something, then calls ``agent.cli.app()``).
AGENT_ENTRY = ("-m", "agent.cli")
#: The bare gRPC method ``echo_server`` serves (raw bytes in, the same bytes out).
ECHO_METHOD = "/edgefleet.bench.Echo/Echo"


class FleetError(RuntimeError):
    """The fleet could not be brought up; the message carries the relevant process log."""


def wait_until(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; FleetError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the thing polled may not be up yet
            last_error = exc
        time.sleep(interval)
    raise FleetError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


class Proc:
    """A child Python process whose output a thread collects, so reading it never blocks us."""

    def __init__(self, name: str, args: Sequence[str]) -> None:
        self.name = name
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._pump, name=f"pump-{name}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, prefix: str, timeout: float = START_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise FleetError(
                    f"{self.name} exited ({self.proc.poll()}) before printing {prefix!r}:\n{self.log()}"
                )
            if line.startswith(prefix):
                return line.strip()
        raise FleetError(f"{self.name} did not print {prefix!r} within {timeout}s:\n{self.log()}")

    def log(self, last: int = 40) -> str:
        return "\n".join(self.lines[-last:])

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        return self.proc.returncode


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
        return "\n\n".join(f"--- {p.name} ---\n{p.log()}" for p in self.procs)


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


def _stop_all(procs: list[Proc]) -> None:
    # Agents first (they hold streams to the controller), then the controller. A second Ctrl-C
    # during teardown must not leave a child running, so SIGINT is ignored while we stop them.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        for proc in reversed(procs):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others whatever happens to one
                print(f"warning: stopping {proc.name} failed: {exc}", file=sys.stderr)
                with contextlib.suppress(Exception):
                    proc.proc.kill()
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)


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
    with sigterm_as_interrupt():
        try:
            controller_proc = Proc(
                "controller",
                [
                    "-m",
                    "controller.cli.main",
                    "serve",
                    "--data-dir",
                    str(workdir / "controller"),
                    "--listen",
                    "127.0.0.1:0",
                    "--log-level",
                    log_level,
                ],
            )
            procs.append(controller_proc)
            controller = controller_proc.wait_for_line("controller listening on").rsplit(" ", 1)[1]

            with AdminClient(controller) as admin:
                token = admin.create_token(ttl_s=3600, uses=len(agent_entries), description="bench").token
                device_ids = [f"bench-{i + 1}" for i in range(len(agent_entries))]
                addresses = []
                for device_id, entry in zip(device_ids, agent_entries, strict=True):
                    agent_proc = Proc(
                        f"agent-{device_id}",
                        [
                            *entry,
                            "run",
                            "--controller",
                            controller,
                            "--data-dir",
                            str(workdir / device_id),
                            "--hardware",
                            hardware,
                            "--token",
                            token,
                            "--device-id",
                            device_id,
                            "--threads",
                            str(agent_threads),
                            "--log-level",
                            log_level,
                        ],
                    )
                    procs.append(agent_proc)
                    addresses.append(agent_proc.wait_for_line("agent listening on").rsplit(" ", 1)[1])

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
        except FleetError as exc:
            raise FleetError(
                f"{exc}\n\n" + "\n\n".join(f"--- {p.name} ---\n{p.log()}" for p in procs)
            ) from None
        finally:
            _stop_all(procs)


@contextlib.contextmanager
def echo_server() -> Iterator[tuple[str, int]]:
    """A bare ``grpc.aio`` server in a child process answering ``ECHO_METHOD`` with the request bytes.

    It does no work at all, so a round trip to it is the floor any Python gRPC service pays on this
    machine (transport, both gRPC stacks, scheduling). Yields (address, pid); always stopped.
    """
    with sigterm_as_interrupt():
        proc = Proc("echo", [str(Path(__file__).resolve()), "echo-server"])
        try:
            yield proc.wait_for_line("echo listening on").rsplit(" ", 1)[1], proc.proc.pid
        finally:
            _stop_all([proc])


def _serve_echo() -> None:
    import asyncio

    import grpc

    from common import limits

    async def echo(request: bytes, context: object) -> bytes:
        return request

    async def main() -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", limits.MAX_GRPC_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", limits.MAX_GRPC_MESSAGE_BYTES),
            ]
        )
        service, method = ECHO_METHOD.strip("/").split("/")
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    service, {method: grpc.unary_unary_rpc_method_handler(echo)}
                )
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"echo listening on 127.0.0.1:{port}", flush=True)
        await stop.wait()
        await server.stop(0)

    asyncio.run(main())


if __name__ == "__main__":
    if sys.argv[1:] != ["echo-server"]:
        sys.exit(f"usage: {sys.argv[0]} echo-server   (the module is a helper for bench scripts)")
    _serve_echo()

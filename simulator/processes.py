"""Real controller and agent processes on this machine: used by `make demo`, the e2e tests and benchmarks.

Each child is started with the current interpreter, its output collected by a thread (so reading
never blocks), and always stopped: SIGTERM first, SIGKILL if it does not exit in time.

Waiting that fails (a line not printed, a condition not reached) raises ``ProcessError``, an
AssertionError, so tests report it as a failure and other callers can catch just that.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent  # children run from the checkout root
#: How an agent is started: ``python <AGENT_ENTRY> run ...``.
AGENT_ENTRY = ("-m", "agent.cli")


class ProcessError(AssertionError):
    """A child process did not print, or a polled condition did not become true, in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
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
    raise ProcessError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


class Proc:
    """A child process whose output is collected by a thread, so reading never blocks the test.

    ``registry``, when given, gets the Proc appended as soon as the child exists, so whoever tears
    down (``terminate_all``) sees it even if starting or waiting for it fails later.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        registry: list[Proc] | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        if registry is not None:
            registry.append(self)  # before anything else can raise: whoever tears down must see it
        self._reader = threading.Thread(target=self._pump, name=f"pump-{name}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_line(self, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise ProcessError(
                    f"{self.name} exited ({self.proc.poll()}) before printing {prefix!r}:\n{self.log()}"
                )
            if line.startswith(prefix):
                return line.strip()
        raise ProcessError(f"{self.name} did not print {prefix!r} within {timeout}s:\n{self.log()}")

    def log(self, last: int = 60) -> str:
        return "\n".join(self.lines[-last:])

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)

    def terminate(self, timeout: float = 15.0) -> int:
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


def terminate_all(procs: Sequence[Proc]) -> list[int | None]:
    """Terminate ``procs`` last started first (agents before the controller they hold streams to).

    Keeps going whatever happens to one (that one is SIGKILLed, a warning printed, its status None);
    returns the exit statuses in the order of ``procs``.
    """
    codes: list[int | None] = [None] * len(procs)
    for i in reversed(range(len(procs))):
        try:
            codes[i] = procs[i].terminate()
        except Exception as exc:
            print(f"warning: stopping {procs[i].name} failed: {exc}", file=sys.stderr)
            with contextlib.suppress(Exception):
                procs[i].proc.kill()
    return codes


def start_controller(
    data_dir: Path,
    port: int,
    *,
    heartbeat: str | None = "1s",
    log_level: str = "debug",
    timeout: float = 30.0,
    registry: list[Proc] | None = None,
    extra: Sequence[str] = (),
) -> tuple[Proc, str]:
    """A controller on ``127.0.0.1:port`` (0: any free port); returns it and its actual address.

    ``heartbeat=None`` leaves the controller's own default interval.
    """
    args = [
        "-m",
        "controller.cli.main",
        "serve",
        "--data-dir",
        str(data_dir),
        "--listen",
        f"127.0.0.1:{port}",
    ]
    if heartbeat is not None:
        args += ["--heartbeat-interval", heartbeat]
    args += ["--log-level", log_level, *extra]
    proc = Proc("controller", args, registry=registry)
    line = proc.wait_for_line("controller listening on", timeout)
    return proc, line.rsplit(" ", 1)[1]


def start_agent(
    controller: str,
    data_dir: Path,
    hardware: str,
    *,
    token: str = "",
    device_id: str = "",
    threads: int | None = None,
    log_level: str | None = None,
    entry: Sequence[str] = AGENT_ENTRY,
    timeout: float = 30.0,
    registry: list[Proc] | None = None,
    extra: Sequence[str] = (),
) -> tuple[Proc, str]:
    """An agent started as ``python <entry> run ...``; returns it and its Infer address.

    ``entry`` may name a launcher script instead of the module (one that patches something, then
    calls ``agent.cli.app()``); ``threads`` and ``log_level`` left None keep the agent's defaults;
    ``extra`` are further ``run`` options (``--label``, ``--link``).
    """
    args = [
        *entry,
        "run",
        "--controller",
        controller,
        "--data-dir",
        str(data_dir),
        "--hardware",
        hardware,
    ]
    if token:
        args += ["--token", token]
    if device_id:
        args += ["--device-id", device_id]
    if threads is not None:
        args += ["--threads", str(threads)]
    if log_level is not None:
        args += ["--log-level", log_level]
    args += list(extra)
    proc = Proc(f"agent-{device_id or hardware}", args, registry=registry)
    line = proc.wait_for_line("agent listening on", timeout)
    return proc, line.rsplit(" ", 1)[1]


def fleetctl(*args: str, controller: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", *args, "--controller", controller],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"fleetctl {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result

"""Real controller and agent processes on this machine: used by `make demo`, the e2e tests and benchmarks.

Each child is started with the current interpreter, its output collected by a thread (so reading
never blocks), and always stopped: SIGTERM first, SIGKILL if it does not exit in time.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent  # children run from the checkout root


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
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


class Proc:
    """A child process whose output is collected by a thread, so reading never blocks the test."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self._reader = threading.Thread(target=self._pump, name=f"pump-{name}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

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
                raise AssertionError(
                    f"{self.name} exited ({self.proc.poll()}) before printing {prefix!r}:\n{self.log()}"
                )
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"{self.name} did not print {prefix!r} within {timeout}s:\n{self.log()}")

    def log(self, last: int = 60) -> str:
        return "\n".join(self.lines[-last:])

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        return self.proc.returncode


def start_controller(data_dir: Path, port: int, *, heartbeat: str = "1s") -> tuple[Proc, str]:
    proc = Proc(
        "controller",
        [
            "-m",
            "controller.cli.main",
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--heartbeat-interval",
            heartbeat,
            "--log-level",
            "debug",
        ],
    )
    line = proc.wait_for_line("controller listening on")
    return proc, line.rsplit(" ", 1)[1]


def start_agent(
    controller: str, data_dir: Path, hardware: str, *, token: str = "", device_id: str = ""
) -> tuple[Proc, str]:
    args = [
        "-m",
        "agent.cli",
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
    proc = Proc(f"agent-{device_id or hardware}", args)
    line = proc.wait_for_line("agent listening on")
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

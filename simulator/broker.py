"""A private Mosquitto (for tests, benches and the simulator's realtime engine): its own loopback
port and temporary config, stoppable, restartable, never leaked (never the machine's own broker on
1883).

``Mosquitto.start`` waits for the broker to say it is running on its log (an event, not a sleep) and
picks another port if the one it chose was taken meanwhile; ``stop`` is graceful (SIGTERM: the broker
saves retained messages and sessions when persistence is on), ``kill`` is abrupt (SIGKILL), and
``restart`` comes back on the same port. Every broker started is stopped at interpreter exit at the
latest, even when a test forgets to.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import weakref
from pathlib import Path

from common import limits

MOSQUITTO = Path(os.environ.get("EDGEFLEET_MOSQUITTO", "/usr/sbin/mosquitto"))
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

_live: weakref.WeakSet[Mosquitto] = weakref.WeakSet()


def available() -> bool:
    return (MOSQUITTO.is_file() and os.access(MOSQUITTO, os.X_OK)) or shutil.which("mosquitto") is not None


def _binary() -> str:
    if MOSQUITTO.is_file():
        return str(MOSQUITTO)
    found = shutil.which("mosquitto")
    if found is None:
        raise FileNotFoundError(f"mosquitto is not installed ({MOSQUITTO} is missing)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerFailed(RuntimeError):
    pass


class Mosquitto:
    """One broker process at a time on ``port`` (fixed after the first successful start)."""

    def __init__(
        self, workdir: Path, *, persistence: bool = True, anonymous: bool = True, extra_config: str = ""
    ) -> None:
        self.workdir = workdir
        self.persistence = persistence
        self.anonymous = anonymous
        self.extra_config = extra_config
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: list[str] = []
        self._log_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.starts = 0
        (workdir / "data").mkdir(parents=True, exist_ok=True)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        with self._log_lock:
            return "".join(self._log)

    def _config(self, port: int) -> Path:
        path = self.workdir / "mosquitto.conf"
        path.write_text(
            "\n".join(
                [
                    f"listener {port} 127.0.0.1",
                    f"allow_anonymous {'true' if self.anonymous else 'false'}",
                    f"persistence {'true' if self.persistence else 'false'}",
                    f"persistence_location {self.workdir / 'data'}/",
                    # Started as root, mosquitto switches to user "mosquitto", which could not write the
                    # persistence file in our temporary directory: stay who we are.
                    f"user {pwd.getpwuid(os.geteuid()).pw_name}",
                    f"max_packet_size {limits.MAX_MQTT_PACKET_BYTES}",
                    "max_queued_messages 10000",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "connection_messages true",
                    self.extra_config,
                    "",
                ]
            )
        )
        return path

    def start(self) -> None:
        """Start the broker; on a first start, on a free port (another one if it was taken meanwhile)."""
        if self.running:
            return
        attempts = 1 if self.port else 5
        for _ in range(attempts):
            port = self.port or _free_port()
            if self._start_on(port):
                self.port = port
                self.starts += 1
                return
            if "Address already in use" not in self.log_text() or self.port:
                break
        raise BrokerFailed(f"mosquitto did not start:\n{self.log_text()}")

    def _start_on(self, port: int) -> bool:
        config = self._config(port)
        process = subprocess.Popen(
            [_binary(), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C to the test run does not reach it before we stop it
        )
        self.process = process
        _live.add(self)
        ready = threading.Event()
        ended = threading.Event()
        with self._log_lock:
            self._log.append(f"--- start on port {port}\n")

        def read() -> None:
            assert process.stderr is not None
            for raw in process.stderr:
                line = raw.decode(errors="replace")
                with self._log_lock:
                    self._log.append(line)
                if " running" in line and "mosquitto version" in line:
                    ready.set()
            ended.set()
            ready.set()

        self._reader = threading.Thread(target=read, name=f"mosquitto-{port}", daemon=True)
        self._reader.start()
        if not ready.wait(START_TIMEOUT_S) or ended.is_set():
            self._terminate(signal.SIGKILL)
            return False
        return True

    def _terminate(self, sig: signal.Signals) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT_S)
            self._reader = None
        if process.stderr is not None:
            process.stderr.close()
        self.process = None

    def stop(self) -> None:
        """Graceful: SIGTERM (persistence is saved), wait for the process to end."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """Abrupt: SIGKILL (whatever was not saved yet is lost, as in a crash)."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        _live.discard(self)


@atexit.register
def _stop_all() -> None:  # pragma: no cover - only when a test leaked a broker
    for broker in list(_live):
        broker.kill()

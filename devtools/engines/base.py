"""Process plumbing shared by the embedded engines: pidfile, port check, readiness, stop.

An engine is a server process started detached (its own session, so Ctrl-C in the caller's
terminal does not reach it) with its output appended to ``<dir>/<name>.log``. Its pidfile
``<dir>/<name>.pid`` holds the pid and the URL. Start and stop take an flock on
``<dir>/.lock``, so concurrent callers (two terminals, parallel test sessions) start one
process and the others reuse it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psutil


class EngineError(RuntimeError):
    """An engine could not be started, with a message that says what to do about it."""


@dataclass(frozen=True)
class EngineStatus:
    name: str
    url: str
    pid: int
    started_by_us: bool


# Engines this process started. Keeping the Popen objects lets stop() reap them (no zombies
# while `run` waits for its command) and avoids "subprocess still running" ResourceWarnings.
_children: dict[int, subprocess.Popen[bytes]] = {}


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if binding the port fails, i.e. some socket holds it (listening or not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def tcp_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


class Engine:
    name: ClassVar[str]
    env_var: ClassVar[str]
    default_port: ClassVar[int]
    # A string in the engine's command line: a pid from the pidfile that was recycled by the
    # OS for an unrelated process is not mistaken for the engine.
    process_marker: ClassVar[str]
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    start_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 30.0

    def __init__(self, data_dir: Path, port: int) -> None:
        self.port = port
        self.dir = data_dir / self.name
        self.pidfile = self.dir / f"{self.name}.pid"
        self.logfile = self.dir / f"{self.name}.log"

    # -- what each engine defines ------------------------------------------------------------

    @property
    def url(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        """Does the engine answer real requests on its port (not just accept TCP)?"""
        raise NotImplementedError

    def prepare(self) -> None:
        """Before the process starts (e.g. initdb)."""

    def after_ready(self) -> None:
        """Once it answers (e.g. create the database)."""

    def popen_kwargs(self) -> dict[str, Any]:
        return {}

    # -- shared behaviour --------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def running_pid(self) -> int | None:
        """The pid in the pidfile if that process is alive and is this engine."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                _reap(pid)
                return None
            if self.process_marker in " ".join(proc.cmdline()):
                return pid
        except (OSError, ValueError, IndexError, psutil.Error):
            pass
        return None

    def pidfile_url(self) -> str | None:
        try:
            return self.pidfile.read_text().split()[1]
        except (OSError, IndexError):
            return None

    def start(self) -> EngineStatus:
        """Start the engine, or reuse the one that already runs from this data directory."""
        with self._locked():
            pid = self.running_pid()
            if pid is not None:
                # Callers race only before the flock; the holder waited for readiness, so a
                # short grace is enough for an engine that is merely busy.
                if self._poll(self.is_ready, 3.0):
                    say(f"{self.name:<11}reused    {self.url}  (pid {pid})")
                    return EngineStatus(self.name, self.url, pid, started_by_us=False)
                raise EngineError(
                    f"Embedded {self.name} runs from {self.dir} (pid {pid}) but does not answer on "
                    f"127.0.0.1:{self.port}. It may have been started with another port; stop it with "
                    f"`python -m devtools.engines down --only {self.name}` and start again."
                )
            self.pidfile.unlink(missing_ok=True)  # stale: its process is gone
            if port_in_use(self.port):
                raise EngineError(
                    f"Cannot start embedded {self.name}: port 127.0.0.1:{self.port} is in use by "
                    f"another process. Either set {self.env_var} to use an existing {self.name} "
                    f"server, or set EMBEDDED_{self.name.upper()}_PORT to a free port."
                )
            started = time.monotonic()
            self.prepare()
            cmd = self.command()
            with open(self.logfile, "ab") as log:
                log_offset = log.tell()
                log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                    start_new_session=True,  # Ctrl-C in the terminal must not kill it; stop() does
                    **self.popen_kwargs(),
                )
            _children[proc.pid] = proc
            self.pidfile.write_text(f"{proc.pid}\n{self.url}\n")
            try:
                self._wait_ready(proc, started, log_offset)
                self.after_ready()
            except BaseException:
                self._terminate(proc.pid)
                self.pidfile.unlink(missing_ok=True)
                raise
            say(f"{self.name:<11}started   {self.url}  (pid {proc.pid}, {time.monotonic() - started:.1f} s)")
            return EngineStatus(self.name, self.url, proc.pid, started_by_us=True)

    def stop(self) -> int | None:
        """Stop the engine if it runs; return the pid it had."""
        with self._locked():
            pid = self.running_pid()
            if pid is not None:
                self._terminate(pid)
                say(f"{self.name:<11}stopped   (pid {pid})")
            self.pidfile.unlink(missing_ok=True)
            return pid

    @staticmethod
    def _poll(check: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not check():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _wait_ready(self, proc: subprocess.Popen[bytes], started: float, log_offset: int) -> None:
        while not self.is_ready():
            if proc.poll() is not None:
                raise EngineError(
                    f"Embedded {self.name} exited with code {proc.returncode} while starting. "
                    f"Last lines of {self.logfile}:\n{self._log_tail(log_offset)}"
                )
            if time.monotonic() - started > self.start_timeout:
                raise EngineError(
                    f"Embedded {self.name} did not answer on 127.0.0.1:{self.port} within "
                    f"{self.start_timeout:.0f} s. Last lines of {self.logfile}:\n{self._log_tail(log_offset)}"
                )
            time.sleep(0.05)

    def _log_tail(self, offset: int, lines: int = 25) -> str:
        try:
            with open(self.logfile, "rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty)"

    def _terminate(self, pid: int) -> None:
        """Ask politely (the engine's own clean-shutdown signal), then SIGKILL its group."""
        try:
            proc = psutil.Process(pid)
            proc.send_signal(self.stop_signal)
            try:
                _wait(proc, self.stop_timeout)
            except psutil.TimeoutExpired:
                # It leads its own session (start_new_session), so the group is the engine
                # and its helpers (postgres backends), nothing of ours.
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    proc.kill()
                _wait(proc, 10)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
        _reap(pid)


def _wait(proc: psutil.Process, timeout: float) -> None:
    child = _children.get(proc.pid)
    if child is not None:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired as ex:
            raise psutil.TimeoutExpired(timeout, proc.pid) from ex
        return
    # Not our child: it was reparented, and its new parent may reap it late (psutil's wait()
    # then took ~2 s here). Exited is exited, zombie or not.
    deadline = time.monotonic() + timeout
    while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
        if time.monotonic() > deadline:
            raise psutil.TimeoutExpired(timeout, proc.pid)
        time.sleep(0.02)


def _reap(pid: int) -> None:
    child = _children.pop(pid, None)
    if child is not None:
        child.poll()

"""Prediction runs in a separate Python process, so the viewer's process only has to draw.

A run shares two CPU cores with napari on a small machine; in napari's own process its tile
readers and model calls also compete with the GUI thread for Python's global interpreter
lock, and each redraw waits for it. In a process of its own the run takes only CPU time
(its threads at a lower priority, see :attr:`.spec.RunSpec.yield_cpu`), the viewer's
process keeps its lock to itself, and a crash in a native library (a slide decoder, ONNX
Runtime) ends the run, not the viewer.

:class:`RunProcess` is one such process: started once (``python -m`` this module, which
connects back over :mod:`multiprocessing.connection` with a one-time key), it imports the
engine while it waits, then runs one :class:`~.spec.RunSpec` at a time and sends the
same events :func:`~.stream.run_events` yields. :func:`run_events_in_process` is
that generator over a process from a small pool (:func:`prewarm` starts one before it is
needed, so a run does not wait for the imports); where no process can be started (e.g. a
frozen application without a Python interpreter) it runs in this process instead. Nothing
here touches Qt or napari.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Generator
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path

from napari_virtual_st.errors import VirtualSTError
from napari_virtual_st.run.events import RunEvent
from napari_virtual_st.run.spec import RunSpec
from napari_virtual_st.run.stream import Failed, Finished, run_events, work

#: Seconds a new process may take to import the engine and connect back.
START_TIMEOUT_S = 120.0
#: Seconds between looks at the user's cancel request while waiting for the next event.
POLL_S = 0.05
#: Seconds a cancelled or abandoned run gets to stop at its batch boundary before its
#: process is ended.
STOP_TIMEOUT_S = 60.0
#: Idle processes kept for later runs.
SPARE_PROCESSES = 1


class RunProcessError(VirtualSTError):
    """The prediction process could not start, or ended during a run."""


class RunProcess:
    """A Python process that runs predictions, one at a time, for this one.

    The process starts at once and imports the engine in the background; :meth:`run`
    waits for it if it is not ready yet. It ends when :meth:`close` is called or when this
    process ends (its connection closes).
    """

    def __init__(self) -> None:
        # (a Unix socket, or a named pipe on Windows: an address that is one string)
        self._listener = Listener(authkey=(key := os.urandom(32)))
        self._connection: Connection | None = None
        self._accepted = threading.Event()
        self._lock = threading.Lock()
        self._runs = 0
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # (this copy of the package)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(self._listener.address)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
        )
        assert self._process.stdin is not None
        self._process.stdin.write(key.hex().encode() + b"\n")
        self._process.stdin.close()
        threading.Thread(target=self._accept, name="vst-run-process-accept", daemon=True).start()
        _STARTED.append(self)

    @property
    def pid(self) -> int:
        """The process id."""
        return self._process.pid

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self._process.poll() is None

    def _accept(self) -> None:
        try:
            self._connection = self._listener.accept()
        except OSError:  # (closed before the process connected)
            pass
        finally:
            self._listener.close()
            self._accepted.set()

    def ready(self, timeout: float = START_TIMEOUT_S) -> Connection:
        """The connection to the process, once it has imported the engine and connected back.

        Raises
        ------
        RunProcessError
            When it ended or timed out first (it is then closed).
        """
        waited = 0.0
        while not self._accepted.wait(POLL_S):
            waited += POLL_S
            if not self.alive or waited >= timeout:
                break
        if self._connection is None:
            code = self._process.poll()
            status = f"it ended with exit status {code}" if code is not None else "it timed out"
            self.close()
            raise RunProcessError(f"the prediction process did not start ({status})")
        return self._connection

    def run(
        self, spec: RunSpec, cancel: threading.Event | None = None
    ) -> Generator[RunEvent, None, Path]:
        """:func:`.stream.run_events` in the process: the same events and return value.

        Raises
        ------
        RunProcessError
            When the process cannot start or ends before the run does (finished batches
            stay in the store, and a new run resumes them).
        VirtualSTError
            Whatever the engine raised, with its message.
        """
        cancel = threading.Event() if cancel is None else cancel
        connection = self.ready()
        self._runs += 1
        run_id = self._runs
        with self._lock:
            connection.send(("run", run_id, spec))
        asked_to_stop = False
        try:
            while True:
                if cancel.is_set() and not asked_to_stop:
                    self._send_cancel(connection)
                    asked_to_stop = True
                item = self._receive(connection, POLL_S, spec, run_id)
                if item is None:
                    continue
                if isinstance(item, Finished):
                    return item.store_path
                if isinstance(item, Failed):
                    raise item.error
                yield item
        except GeneratorExit:  # closed early (worker quit, viewer closed): stop the run
            self._send_cancel(connection)
            self._wait_for_end(connection, spec, run_id)
            raise

    def _send_cancel(self, connection: Connection) -> None:
        with self._lock, contextlib.suppress(OSError):  # (ended: the next receive says)
            connection.send(("cancel", None, None))

    def _receive(
        self, connection: Connection, timeout: float, spec: RunSpec, run_id: int
    ) -> RunEvent | Finished | Failed | None:
        """The next item the process sends about run ``run_id``, or ``None`` if none came
        within ``timeout`` (items of an earlier run, abandoned, are dropped)."""
        try:
            if not connection.poll(timeout):
                if self.alive:
                    return None
                if not connection.poll(0):  # (what it sent before it ended still counts)
                    raise EOFError
            sent_for, item = connection.recv()
        except (EOFError, OSError):
            code = self._process.wait()
            self.close()
            raise RunProcessError(
                f"the prediction process ended unexpectedly (exit status {code}); the "
                f"batches it finished are saved in {spec.store_path.name} and a new run "
                "resumes them"
            ) from None
        return item if sent_for == run_id else None

    def _wait_for_end(self, connection: Connection, spec: RunSpec, run_id: int) -> None:
        """Wait for an abandoned run's last item; end the process if it does not come."""
        waited = 0.0
        try:
            while waited < STOP_TIMEOUT_S:
                item = self._receive(connection, POLL_S, spec, run_id)
                if isinstance(item, Finished | Failed):
                    return
                waited += POLL_S if item is None else 0.0
        except RunProcessError:
            return
        self.close()

    def close(self) -> None:
        """End the process (a run in it stops where it is; finished batches are saved)."""
        with contextlib.suppress(ValueError):
            _STARTED.remove(self)
        if self._connection is not None:
            self._connection.close()
        else:
            self._listener.close()
        if self.alive:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()


_STARTED: list[RunProcess] = []
_SPARES: list[RunProcess] = []
_POOL_LOCK = threading.Lock()


def prewarm() -> None:
    """Start a spare prediction process now, if there is none, so that the next run does
    not wait for one to import the engine. Where none can start, nothing happens (the run
    will say why, or run in this process)."""
    with _POOL_LOCK:
        if any(p.alive for p in _SPARES):
            return
        with contextlib.suppress(OSError):
            _SPARES.append(RunProcess())


def acquire() -> RunProcess:
    """A live idle process from the pool, or a new one.

    Raises
    ------
    OSError
        When no process can be started.
    """
    with _POOL_LOCK:
        while _SPARES:
            process = _SPARES.pop()
            if process.alive:
                return process
    return RunProcess()


def release(process: RunProcess) -> None:
    """Give a process back to the pool after its run (one that has ended is dropped)."""
    with _POOL_LOCK:
        if process.alive and len(_SPARES) < SPARE_PROCESSES:
            _SPARES.append(process)
            return
    process.close()


def run_events_in_process(
    spec: RunSpec, cancel: threading.Event | None = None
) -> Generator[RunEvent, None, Path]:
    """:func:`.stream.run_events` in a process of the pool (see the module's text).

    When no process can be started, the run happens in this process (with a warning).
    """
    try:
        process = acquire()
        process.ready()
    except (OSError, RunProcessError) as exc:
        warnings.warn(f"running the prediction in napari's own process: {exc}", RuntimeWarning, 2)
        return (yield from run_events(spec, cancel))
    try:
        return (yield from process.run(spec, cancel))
    finally:
        release(process)


@atexit.register
def _close_all() -> None:
    for process in list(_STARTED):
        process.close()


# -- the process's side -----------------------------------------------------------------------
def serve(connection: Connection) -> None:
    """Run the requests that come over ``connection`` until it closes.

    Each ``("run", run_id, RunSpec)`` starts a run on a thread of its own, whose events
    (and its final result or error) are sent back as ``(run_id, item)`` as they come;
    ``("cancel", None, None)`` stops it at its next batch boundary. When the connection
    closes the run in progress is cancelled.
    """
    send_lock = threading.Lock()
    cancel = threading.Event()
    current: threading.Thread | None = None

    def sender(run_id: int, cancel: threading.Event) -> Callable[[object], None]:
        def send(item: object) -> None:
            with send_lock:
                try:
                    connection.send((run_id, item))
                except (OSError, ValueError):  # the viewer went: stop the run
                    cancel.set()
                except Exception:  # something that cannot be sent: the run ends with that
                    cancel.set()
                    connection.send((run_id, Failed(RuntimeError(_describe(item)))))

        return send

    while True:
        try:
            kind, run_id, payload = connection.recv()
        except (EOFError, OSError):
            cancel.set()
            break
        if kind == "run":
            if current is not None:
                current.join()
            cancel = threading.Event()
            current = threading.Thread(
                target=_serve_run,
                args=(payload, cancel, sender(run_id, cancel)),
                name="vst-run",
                daemon=True,
            )
            current.start()
        elif kind == "cancel":
            cancel.set()
    if current is not None:
        current.join()


def _serve_run(spec: RunSpec, cancel: threading.Event, send: Callable[[object], None]) -> None:
    def emit(item: object) -> None:
        if isinstance(item, Failed) and not isinstance(item.error, VirtualSTError):
            error = item.error
            text = "".join(traceback.format_exception(error))
            item = Failed(RuntimeError(f"in the prediction process: {text}"))
        send(item)

    work(spec, cancel, emit)


def _describe(item: object) -> str:
    if isinstance(item, Failed):
        return f"in the prediction process: {item.error!r}"
    return f"the prediction process could not send {type(item).__name__}"


def main(argv: list[str] | None = None) -> None:
    """Entry of the process: connect back to the viewer's process and serve its runs."""
    (address,) = sys.argv[1:] if argv is None else argv
    key = bytes.fromhex(sys.stdin.readline().strip())
    with Client(address, authkey=key) as connection:
        threading.Thread(target=warm_imports, name="vst-warm", daemon=True).start()
        serve(connection)


#: Modules a first run imports lazily (slide decoders), imported by a waiting process.
WARM_MODULES = ("tifffile", "imagecodecs", "openslide")


def warm_imports() -> None:
    """Import what a first run would import on its way (the slide decoders: ~0.3 s here),
    while the process waits for it; a run that comes sooner waits on Python's import lock
    for the same modules, never for more."""
    import importlib

    for name in WARM_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


if __name__ == "__main__":
    main()

"""The first SIGTERM/SIGINT: cancel queued work at once, before the server waits for open requests.

uvicorn's graceful shutdown waits for every open request to finish, and a request waiting for
its turn in the generation queue only finishes when its job has run, so without this a full queue
ran to the end before the process exited. The hook runs ``action`` on a new thread (a signal
handler must not take the queue's lock) and then hands the signal to uvicorn's own handler.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

from localai_sd.server.installs import InstallJobs
from localai_sd.server.jobs import GenerationQueue

#: The signals that stop the server.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def on_first_signal(action: Callable[[], None]) -> Callable[[], None]:
    """Run ``action`` on the first stop signal, then the previous handler; return a function that unhooks.

    Off the main thread (a server run by tests in a thread) signals cannot be hooked: nothing is done.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    fired = threading.Event()

    def handler(sig: int, frame: FrameType | None) -> None:
        """Start ``action`` once, then pass the signal on."""
        if not fired.is_set():
            fired.set()
            threading.Thread(target=action, name="localai-sd-shutdown", daemon=True).start()
        old = previous[signal.Signals(sig)]
        if callable(old):
            old(sig, frame)
        elif old == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)

    def unhook() -> None:
        """Put the previous handlers back (if ours are still installed)."""
        for sig, old in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, old)

    return unhook


def begin_shutdown(queue: GenerationQueue, installs: InstallJobs) -> None:
    """The first signal's action: queued generations fail with 503 now, running work stops at its next step."""
    queue.shutdown()
    installs.cancel_all()

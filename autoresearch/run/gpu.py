"""Peak GPU memory of a stage, measured from outside the sandbox."""
from __future__ import annotations

import shutil
import subprocess
import threading


class GpuPeak:
    """Peak GPU memory used during a stage, polled with nvidia-smi from the host (what the
    stage says about itself is not trusted), summed over the stage's GPUs (host indices).
    Inactive without GPUs or nvidia-smi."""

    def __init__(self, gpus: list[int], interval: float = 0.5):
        self.interval, self.peak_bytes, self.gpus = interval, None, gpus
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cmd = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                     "-i", ",".join(map(str, gpus))]

    def _used(self) -> int | None:
        try:
            out = subprocess.run(self._cmd, capture_output=True, text=True, timeout=5).stdout
            return sum(int(x) for x in out.split() if x.isdigit()) * 2**20
        except (OSError, subprocess.SubprocessError, ValueError):
            return None

    def __enter__(self) -> "GpuPeak":
        if self.gpus and shutil.which("nvidia-smi"):
            base = self._used()
            if base is not None:
                def poll() -> None:
                    while not self._stop.wait(self.interval):
                        if (u := self._used()) is not None:
                            self.peak_bytes = max(self.peak_bytes or 0, u - base)
                self._thread = threading.Thread(target=poll, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=6)

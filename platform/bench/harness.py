"""What every benchmark shares: the device, repeated timings, peak memory, the environment
record and the JSON/table output."""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

DEFAULT_OUT_DIR = Path("outputs") / "bench"


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    calls: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Seconds of ``repeats`` rounds of the ``calls``, one after another in each round (so that a
    machine whose load changes treats them alike), the device synchronised around each call: per
    call the median and the minimum wall-clock time, and the median CPU time of this process (all
    its threads; on a CPU shared with other work it varies less than the wall clock). Warm-up
    calls are the caller's business."""
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            synchronize(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        name: {
            "median_s": statistics.median(wall[name]),
            "min_s": min(wall[name]),
            "cpu_median_s": statistics.median(cpu[name]),
        }
        for name in calls
    }


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory that ``fn`` adds above what is held when it starts, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak, less the memory
    allocated before. CPU (Linux): the process's resident high-water mark (``VmHWM``), reset to
    the current resident size by writing 5 to ``/proc/self/clear_refs`` after ``malloc_trim``
    has returned the allocator's free memory to the system, less the resident size before
    (``VmRSS``). Call it first thing in a fresh process (see :func:`in_fresh_processes`): memory
    that an earlier computation left cached in the allocator would otherwise be reused unseen.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


#: what a fresh process runs: the pickled ``(fn, args)`` from stdin, the pickled result to stdout
_CHILD = "import pickle, sys; fn, args = pickle.load(sys.stdin.buffer); " + (
    "pickle.dump(fn(*args), sys.stdout.buffer)"
)


def in_fresh_processes(fn: Callable, arguments: Sequence[tuple]) -> list:
    """``[fn(*args) for args in arguments]``, each call in a new Python interpreter of its own
    (so it shares no allocator state with this one or the others), all at once; ``fn`` must be
    importable by name and must not print, its arguments and results picklable. The children
    import only ``fn``'s module, not this process's ``__main__`` (as ``multiprocessing``'s spawn
    would: the whole CLI)."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in arguments
    ]
    for child, args in zip(children, arguments, strict=True):
        child.stdin.write(pickle.dumps((fn, args)))
        child.stdin.close()
    results = []
    for child in children:
        output = child.stdout.read()
        if child.wait() != 0:
            raise RuntimeError(f"{fn.__qualname__} failed in its process (exit {child.returncode})")
        results.append(pickle.loads(output))
    return results


def machine_load() -> dict:
    """The machine's 1-minute load average before a benchmark starts, and whether it was idle
    then (under a quarter of its CPUs busy). Other work slows every timing, not the ratios
    that a benchmark measures side by side in one run."""
    load = os.getloadavg()[0]
    return {"load_average_1min_at_start": load, "idle_at_start": load < 0.25 * os.cpu_count()}


def environment(argv: Sequence[str] | None = None, load: dict | None = None) -> dict:
    """The machine, software and command of a run, recorded beside its numbers (and the
    machine's load before the run, :func:`machine_load`)."""
    device = default_device()
    return {
        "command": " ".join(["boxinst", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "load_average_1min": os.getloadavg()[0],  # other work on the machine skews timings
        **(load or {}),
    }


def write_json(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` as indented JSON, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table: columns right-aligned to their widest cell; floats with 3
    significant digits (no exponent from 0.01 to 1e5)."""

    def cell(value: object) -> str:
        if not isinstance(value, float):
            return str(value)
        if value and not 0.01 <= abs(value) < 1e5:
            return f"{value:.2e}"
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"

    cells = [list(header), *([cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

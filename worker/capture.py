"""The denoiser replayed from CUDA graphs captured per key, or called eagerly. Torch only: what a key is and
when a call may be captured is the caller's (worker/embed/capture.py for ComfyUI's models).

SDXL-size steps are CPU-launch-bound on RunPod's hosts (REFERENCE section 5: 78.7 ms eager vs 43.8 ms for
the same model replayed from a CUDA graph). A graph is captured on a key's second call, with static input
buffers; later calls copy their inputs in and replay it. Each capture is checked before it is used: its
replay must match the eager output of the same inputs (TOLERANCE, relative to the output's scale).
Anything that cannot be captured, or does not match, falls back to eager, logged once per key, so a job
never fails for it. A graph reads its weights by address: the caller's `bind` says, before every replay,
whether the weights it was captured on are still the ones in place (else the graph is dropped).

Modes (DENOISER_CAPTURE): "cuda_graph" (the default; eager on a CPU), "off" (eager), "compile"
(torch.compile with reduce-overhead; compiled code is cached on disk, see worker/compile_cache.py).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

Replay = Callable[..., torch.Tensor]
Capture = Callable[[Callable[..., torch.Tensor], list[torch.Tensor]], Replay]
# Largest allowed |replay - eager| relative to max |eager|. The replay runs the same kernels on the same
# inputs, so it is normally exact; the margin admits kernels whose reduction order is not fixed.
TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 2e-2, torch.float32: 1e-4}
MAX_GRAPHS = 8  # keys kept captured per model; the least recently used is dropped
# A key is captured on its second call: a shape used once (e.g. an odd area crop) never pays for a capture,
# and every sampler step after the first replays.
CAPTURE_ON_CALL = 2


class CaptureMismatch(RuntimeError):
    """A captured graph's replay differs from eager beyond TOLERANCE."""


def check_replay(replayed: torch.Tensor, eager: torch.Tensor) -> None:
    """Raise CaptureMismatch unless `replayed` equals `eager` within TOLERANCE for its dtype."""
    scale = max(float(eager.abs().max()), 1e-6)
    error = float((replayed.float() - eager.float()).abs().max()) / scale
    if not error <= TOLERANCE.get(eager.dtype, 1e-2):  # also catches NaN
        raise CaptureMismatch(f"replay differs from eager by {error:.2e} of the output's scale")


def capture_cuda_graph(
    eager: Callable[..., torch.Tensor], inputs: list[torch.Tensor | None], pool: Any = None
) -> Replay:
    """Warm up on a side stream (as PyTorch's CUDA-graph notes require), capture one call, check one replay
    against the warm-up's eager output, and return a function that copies new inputs into the static buffers,
    replays, and returns a copy of the output (samplers keep earlier predictions, which the next replay would
    overwrite; graphs of one model share `pool`, so another graph's replay may, too)."""
    static = [None if t is None else t.clone() for t in inputs]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            reference = eager(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: other threads (health checks, output encoding) may still call CUDA while this one captures.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        output = eager(*static)
    graph.replay()
    check_replay(output, reference)

    def replay(*new: torch.Tensor | None) -> torch.Tensor:
        for buffer, value in zip(static, new, strict=True):
            if buffer is not None:
                buffer.copy_(value)
        graph.replay()
        return output.clone()

    return replay


@dataclass
class Graph:
    replay: Replay
    label: str
    bound: Callable[[], bool]  # the weights captured on are still in place
    replays: int = 0


class GraphCache:
    """Graphs by key (the caller's: input signature and weight state), LRU-bounded, one memory pool.

    `run(key, eager, inputs)` calls `eager(*inputs)` until the key's CAPTURE_ON_CALL-th call, then captures
    (through `capture`, a stand-in in tests) and replays from then on. `reraise`: exceptions that are not a
    capture failure (e.g. a job's interrupt) and must reach the caller."""

    def __init__(self, capture: Capture | None = None, max_graphs: int = MAX_GRAPHS,
                 reraise: tuple[type[BaseException], ...] = ()):
        self.capture = capture or self._capture
        self.max_graphs = max_graphs
        self.reraise = reraise
        self.graphs: OrderedDict[Hashable, Graph] = OrderedDict()
        self.failed: dict[Hashable, str] = {}  # key -> "label: why", each logged once
        self.calls: dict[Hashable, int] = {}
        self.captures = 0
        self._pool: Any = None

    def _capture(self, eager: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> Replay:
        # One memory pool for all of this model's graphs: they never run at once (one job at a time) and
        # each output is copied out, so the activations of several resolutions need not add up.
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return capture_cuda_graph(eager, inputs, self._pool)

    def _count(self, key: Hashable) -> int:
        if len(self.calls) > 64 * self.max_graphs:  # many one-off shapes: forget them
            self.calls.clear()
        self.calls[key] = self.calls.get(key, 0) + 1
        return self.calls[key]

    def clear(self) -> None:
        """Drop every graph and the pool (their memory goes back to the allocator's cache)."""
        self.graphs.clear()
        self._pool = None

    def run(self, key: Hashable, eager: Callable[..., torch.Tensor], inputs: list[torch.Tensor],
            label: str = "", bind: Callable[[], Callable[[], bool]] | None = None) -> torch.Tensor:
        """`bind()` is called right after a capture and returns the check made before each replay."""
        graph = self.graphs.get(key)
        if graph is not None and not graph.bound():
            del self.graphs[key]  # its weights were replaced under it: never replay on others
            self.calls.pop(key, None)
            log.info("denoiser graph for %s dropped: the weights it was captured on changed", graph.label)
            graph = None
        if graph is not None:
            self.graphs.move_to_end(key)
        elif key not in self.failed and self._count(key) >= CAPTURE_ON_CALL:
            graph = self._try_capture(key, eager, inputs, label, bind)
        if graph is None:
            return eager(*inputs)
        graph.replays += 1
        return graph.replay(*inputs)

    def _try_capture(self, key: Hashable, eager: Callable[..., torch.Tensor], inputs: list[torch.Tensor],
                     label: str, bind: Callable[[], Callable[[], bool]] | None) -> Graph | None:
        try:
            replay = self.capture(eager, inputs)
        except self.reraise:
            raise
        except Exception as exc:  # an op that cannot be captured, or a mismatch: eager still works
            self.failed[key] = f"{label}: {type(exc).__name__}: {str(exc)[:200]}"
            if isinstance(exc, torch.OutOfMemoryError):  # the graphs' memory is better left to the job
                self.clear()
                torch.cuda.empty_cache()
            log.warning("denoiser capture failed for %s (%s: %s); running it eagerly", label,
                        type(exc).__name__, exc)
            return None
        graph = Graph(replay, label, bind() if bind is not None else (lambda: True))
        self.graphs[key] = graph
        self.captures += 1
        if len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        log.info("denoiser captured for %s (%d graphs)", label, len(self.graphs))
        return graph

    def describe(self) -> dict[str, Any]:
        return {"graphs": [{"inputs": g.label, "replays": g.replays} for g in self.graphs.values()],
                "captures": self.captures, "eager_after_failure": sorted(self.failed.values())}

"""`fake_cuda_graph`: TrainStep's CUDA-graph path (warm-up, capture, replay) emulated on the CPU.

A CUDA graph records the kernels of one call and replays them on the same memory: the Python code
is not run again, so a value the step read on the host while capturing (a float, a branch, a tensor
made then and kept) stays as it was at the capture. Here a capture records every ATen operation of
the step (below autograd and autocast, as the kernels a GPU would capture) and a replay runs those
operations again, with their outputs written back where the capture's were (the graph's static
memory), without running any Python of the step. An operation that would sync the host (refused
while a GPU captures) fails the capture. Streams are no-ops (one CPU stream). So the CPU tests can
check that a replayed step trains as an eager one, epoch after epoch, which otherwise only a GPU shows.
"""

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from host_syncs import SYNCS


class FakeGraph:
    """torch.cuda.CUDAGraph's ``replay()``: the operations recorded by `graph`."""

    def __init__(self):
        self.ops = []
        self.replays = 0

    def replay(self) -> None:
        made = {}  # id(a tensor made while capturing) -> the same tensor in this replay
        swap = lambda v: made.get(id(v), v) if isinstance(v, torch.Tensor) else v  # noqa: E731
        static = []
        with torch.no_grad():
            for func, args, kwargs, out in self.ops:
                new = func(*tree_map(swap, args), **tree_map(swap, kwargs))
                for old, now in zip(tree_flatten(out)[0], tree_flatten(new)[0]):
                    if isinstance(old, torch.Tensor) and old is not now:
                        made[id(old)] = now
                        if old._base is None:
                            static.append((old, now))
            for old, now in static:  # the graph's static memory: what Python still holds sees this replay
                old.copy_(now)
        self.replays += 1


class _Capture(TorchDispatchMode):
    """Records the operations; a GPU's capture runs none of them, so every tensor made before the
    capture that an operation takes gets its value back at the end (`restore`)."""

    def __init__(self, graph: FakeGraph):
        super().__init__()
        self.graph = graph
        self.made, self.saved = set(), {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if str(func.overloadpacket) in SYNCS:
            raise RuntimeError(f"{func} while capturing a CUDA graph: it syncs with the host (a GPU refuses it)")
        # every tensor from before the capture, not only those a schema marks as written (native_batch_norm
        # updates its running statistics unmarked)
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and id(t) not in self.made and id(t) not in self.saved:
                self.saved[id(t)] = (t, t.detach().clone())
        out = func(*args, **kwargs)
        self.made.update(id(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        self.graph.ops.append((func, args, kwargs, out))
        return out

    def restore(self) -> None:
        with torch.no_grad():
            for t, value in self.saved.values():
                t.copy_(value)


class _Stream:
    def wait_stream(self, other) -> None:
        pass


@contextlib.contextmanager
def fake_cuda_graph(monkeypatch):
    """Within it, a TrainStep made with `graph_step` captures and replays as on a GPU (on the CPU)."""
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "Stream", _Stream)
    monkeypatch.setattr(cuda, "current_stream", lambda *a, **k: _Stream())
    monkeypatch.setattr(cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(cuda, "CUDAGraph", FakeGraph)

    @contextlib.contextmanager
    def graph(g, *args, **kwargs):
        capture = _Capture(g)
        with capture:
            yield
        capture.restore()

    monkeypatch.setattr(cuda, "graph", graph)
    yield


def graph_step(step):
    """Turn a CPU TrainStep (made with cuda_graph=False) into one that captures at its first call."""
    from btkd.engine.evaluate import autocast_for

    step.cuda_graph = True
    step._autocast = autocast_for(step.amp_dtype, step.device, cache_enabled=False)
    return step

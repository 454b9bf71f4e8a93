"""`HostSyncs`: record the operations that make a GPU wait for the host or the host for the GPU.

On a GPU each of these stalls the pipeline: reading a value (``.item()``, ``float(t)``, ``bool(t)``,
``if t.any()``), a result whose shape depends on the data (``nonzero``, boolean-mask indexing), and a
tensor built from host data (``torch.tensor(x, device="cuda")`` is a blocking copy; ``torch.full`` is a
fill kernel). The CPU runs the same operations, so the tests can count them without a GPU.
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: reading a value, data-dependent shapes, a tensor from host data
SYNCS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero", "aten.lift_fresh",
         "aten.unique", "aten._unique2", "aten.bincount")


class HostSyncs(TorchDispatchMode):
    """``with HostSyncs() as syncs: ...`` then ``syncs.events``: the operations of `SYNCS` called, in order
    (boolean-mask indexing as ``"bool index"``)."""

    def __init__(self):
        super().__init__()
        self.events = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in SYNCS:
            self.events.append(name)
        elif name in ("aten.index", "aten.index_put", "aten.index_put_") and any(
                i is not None and i.dtype == torch.bool for i in args[1]):
            self.events.append("bool index")
        return func(*args, **(kwargs or {}))

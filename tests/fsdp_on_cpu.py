"""``distily`` under accelerate's FSDP on CPU processes (gloo), for tests. accelerate picks FSDP only on
accelerators and runs plain data parallelism on CPUs whatever the config asks; here its state is switched to
FSDP, with the plugin the Trainer built from the run's ``fsdp`` / ``fsdp_config``, right after it is set up.
FSDP2 itself runs on CPUs, so everything after that is the run a GPU machine would make.

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_on_cpu.py distill CONFIG.yaml
"""

import sys

import accelerate.state
from accelerate.utils import DistributedType

from distily.cli import main

set_up = accelerate.state.AcceleratorState.__init__


def set_up_fsdp(self, *args, **kwargs):
    set_up(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


accelerate.state.AcceleratorState.__init__ = set_up_fsdp

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

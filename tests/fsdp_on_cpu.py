"""``hf-transfer`` under ``accelerate launch`` with an FSDP config, on gloo CPU processes: for tests only.

Accelerate enables FSDP only for GPU process groups, and hf_transfer refuses FSDP without a GPU for that reason
(docs/distributed.md). torch's FSDP2 itself runs on CPU processes, so this script lets the launched processes do
what they would do on GPUs: the AcceleratorState built for the gloo group is switched to FSDP with the plugin the
launcher's environment describes, and hf_transfer's "needs CUDA GPUs" check is skipped. Everything else (the
Trainer, Accelerate's FSDP2 preparation, sharded checkpoints, the gathered export) runs unchanged.

Usage: ``accelerate launch --config_file FSDP.yaml tests/fsdp_on_cpu.py train RECIPE.yaml``
"""

import os
import sys

import accelerate.state
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

import hf_transfer.launch_check

_accelerator_state_init = accelerate.state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin or FullyShardedDataParallelPlugin()  # from the launcher's environment


accelerate.state.AcceleratorState.__init__ = _fsdp_on_cpu
hf_transfer.launch_check._machine_problems = lambda *args, **kwargs: []

if __name__ == "__main__":
    from hf_transfer.cli import main

    sys.exit(main(sys.argv[1:]))

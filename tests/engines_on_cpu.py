"""``hf-transfer`` under ``accelerate launch`` with an FSDP or DeepSpeed config, on gloo CPU processes: tests only.

Accelerate enables FSDP and DeepSpeed only for GPU process groups, and hf_transfer refuses both without a GPU for
that reason (docs/distributed.md). Their sharding itself runs on CPU processes (torch's FSDP2 over gloo; DeepSpeed
with its CPU accelerator), so this script lets the launched processes do what they would do on GPUs: the
AcceleratorState built for the gloo group is switched to the engine the launcher's environment names, with the
plugin that environment describes (as Accelerate does for a GPU group), and hf_transfer's "needs CUDA GPUs" check
is skipped. Everything else runs unchanged: the Trainer, Accelerate's preparation of the model and optimizer,
sharded checkpoints, the gathered export.

Usage: ``accelerate launch --config_file CONFIG.yaml --mixed_precision no tests/engines_on_cpu.py train RECIPE``
"""

import os
import sys

import accelerate.state
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

import hf_transfer.launch_check

_accelerator_state_init = accelerate.state.AcceleratorState.__init__


def _engine_on_cpu(self, *args, fsdp_plugin=None, deepspeed_plugin=None, **kwargs):
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin, **kwargs)
    if self.distributed_type != DistributedType.MULTI_CPU:
        return
    if os.environ.get("ACCELERATE_USE_FSDP") == "true":
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin or FullyShardedDataParallelPlugin()  # from the launcher's environment
    elif os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        # what AcceleratorState.__init__ does for a GPU group; DeepSpeed then handles precision itself
        plugin = deepspeed_plugin or DeepSpeedPlugin()
        self.distributed_type = DistributedType.DEEPSPEED
        plugin.set_mixed_precision(self._mixed_precision)
        plugin.select(_from_accelerator_state=True)
        self.deepspeed_plugins = plugin
        self._mixed_precision = "no"


accelerate.state.AcceleratorState.__init__ = _engine_on_cpu
# The launched process applies the machine rules from hf_transfer.engine_rules (launch_check re-exports them).
hf_transfer.engine_rules._machine_problems = lambda *args, **kwargs: []

if __name__ == "__main__":
    from hf_transfer.cli import main

    sys.exit(main(sys.argv[1:]))

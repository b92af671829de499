"""Exporting a model that FSDP2 has sharded: ``distributed.full_state_dict`` gathers it, and the files written from
it load as the trained model, plain or as a LoRA adapter.

FSDP cannot be launched through Accelerate on a CPU (Accelerate enables it for GPU process groups only), but
torch's ``fully_shard`` runs on two gloo processes, and the parameters it leaves are the ``DTensor`` shards a GPU
run has. The test shards a tiny BERT that way, tells Accelerate it runs FSDP2 (so ``get_state_dict`` takes its
FSDP2 path, the one a launched run takes) and exports. It also checks the failure the gathering prevents: the
main process's ``save_pretrained`` on its shards.
"""

import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import BertConfig, BertForSequenceClassification

from hf_transfer.distributed import full_state_dict, parameters_sharded

LORA = {"task_type": "SEQ_CLS", "r": 2, "target_modules": ["query", "value"], "init_lora_weights": False}


def build(with_lora: bool):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, num_labels=3, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    if with_lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(**LORA))
    return model


def train_step(model) -> None:
    """One SGD step on a fixed batch (the same on every process, so FSDP's averaged gradient is this one)."""
    gen = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(0, 64, (4, 6), generator=gen), "labels": torch.tensor([0, 1, 2, 1])}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(**batch).loss.backward()
    optimizer.step()


def fsdp2_accelerator():
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = Accelerator(cpu=True)
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    assert accelerator.is_fsdp2
    return accelerator


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool (test_distributed.py)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        accelerator = fsdp2_accelerator()
        mesh = init_device_mesh("cpu", (2,))
        for name, with_lora in (("plain", False), ("lora", True)):
            model = build(with_lora)
            bert = model.get_base_model().bert if with_lora else model.bert
            for layer in bert.encoder.layer:  # as recipes/accelerate/fsdp.yaml wraps: each BertLayer, then the root
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            train_step(model)
            assert type(next(model.parameters())).__name__ == "DTensor"
            trainer = types.SimpleNamespace(is_fsdp_enabled=True, is_deepspeed_enabled=False,
                                            accelerator=accelerator, model=model)
            assert parameters_sharded(trainer)
            state = full_state_dict(trainer)  # every process: a collective
            if rank == 0:
                model.save_pretrained(f"{out_dir}/{name}", state_dict=state)
                if name == "plain":
                    try:  # what run.export did before: save the shards it holds
                        model.save_pretrained(f"{out_dir}/ungathered")
                    except RuntimeError as err:
                        Path(f"{out_dir}/ungathered.err").write_text(str(err))
            dist.barrier()
    finally:
        dist.destroy_process_group()


def test_fsdp2_export_gathers_the_shards(tmp_path):
    ctx = mp.get_context("fork")  # the workers inherit the imports
    procs = [ctx.Process(target=worker, args=(rank, str(tmp_path / "init"), str(tmp_path))) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0

    reference = build(False)
    train_step(reference)
    exported = BertForSequenceClassification.from_pretrained(tmp_path / "plain")
    expected = reference.state_dict()
    assert set(exported.state_dict()) == set(expected)
    for key, value in exported.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6, msg=key)
    assert not torch.equal(expected["classifier.weight"], build(False).state_dict()["classifier.weight"])

    from peft import PeftModel

    lora_reference = build(True)
    train_step(lora_reference)
    # On the untrained base (what build(True) wrapped); the adapter carries the LoRA weights and the classifier.
    adapter = PeftModel.from_pretrained(build(False), tmp_path / "lora")
    got = adapter.merge_and_unload().state_dict()
    want = lora_reference.merge_and_unload().state_dict()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)

    # Without the gathering the main process cannot write its shards: the error a GPU run hit after training.
    assert "invalid python storage" in (tmp_path / "ungathered.err").read_text()


def test_nothing_to_gather_without_a_sharding_engine():
    trainer = types.SimpleNamespace(is_fsdp_enabled=False, is_deepspeed_enabled=False)
    assert full_state_dict(trainer) is None and not parameters_sharded(trainer)


@pytest.mark.parametrize("stage,sharded", [(2, False), (3, True)])
def test_deepspeed_zero3_counts_as_sharded(stage, sharded):
    plugin = types.SimpleNamespace(zero_stage=stage)
    accelerator = types.SimpleNamespace(state=types.SimpleNamespace(deepspeed_plugin=plugin))
    trainer = types.SimpleNamespace(is_fsdp_enabled=False, is_deepspeed_enabled=True, accelerator=accelerator)
    assert parameters_sharded(trainer) is sharded

"""Run by tests/test_train_multiprocess.py under `torchrun --nproc_per_node 2`: trains a tiny student on
synthetic batches and saves each rank's final weights and the micro-batch indices it read. The test trains
the same student in one process (``train_config(grad_accum=2)``) to compare. Then the same in bf16: the
export's fp32 master weights come from a collective over the ranks' ZeRO-2 partitions."""

import sys

import torch

from mergedistill.config import StudentConfig, TrainConfig
from mergedistill.student import build_student
from mergedistill.train import train, unpartitioned_student


def batch_fn(index):
    g = torch.Generator().manual_seed(index)
    ids = torch.randint(5, 60, (4, 16), generator=g)
    labels = torch.full_like(ids, -100)
    masked = torch.rand(ids.shape, generator=g) < 0.2
    labels[masked] = ids[masked]
    inputs = ids.masked_fill(masked, 4)
    return {"input_ids": inputs, "attention_mask": torch.ones_like(ids), "labels": labels}


def make_student():
    torch.manual_seed(0)
    # no dropout: each rank's dropout RNG would otherwise differ from the one process's
    return build_student(StudentConfig(layers=1, hidden=16, heads=2, intermediate=32, max_position=32, dropout=0.0), 64)


def train_config(**changes):
    return TrainConfig(
        **{
            "steps": 4,
            "batch_size": 4,
            "lr": 1e-2,
            "warmup_steps": 1,
            "checkpoint_every": 2,
            "log_every": 1,
            "zero_stage": 2,
            "alpha_kd": 0.0,
            **changes,
        }
    )


def recording(read: list):
    def fn(index):
        read.append(index)
        return batch_fn(index)

    return fn


if __name__ == "__main__":
    out = sys.argv[1]
    student, read = make_student(), []
    train(student, train_config(), recording(read), None, out, progress=False)
    rank = torch.distributed.get_rank()
    torch.save({"weights": student.state_dict(), "read": read}, f"{out}/rank{rank}.pt")
    low = make_student()
    result = train(low, train_config(precision="bf16"), batch_fn, None, f"{out}/bf16", progress=False)
    exported = unpartitioned_student(low, result).state_dict()
    torch.save({"weights": low.state_dict(), "exported": exported}, f"{out}/bf16-rank{rank}.pt")

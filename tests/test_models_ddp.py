"""DDP through torchrun's environment: two gloo processes on CPU agree with each other and with
one process on the same global batch. Light imports only, so the spawned workers start fast."""

import os
from pathlib import Path

import torch

from ehrxdiff_core.config import TrainLoop
from ehrxdiff_core.models.ddp import DistInfo
from ehrxdiff_core.models.training import run_training

torch.set_num_threads(1)
CPU = DistInfo()


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, batch, generator):
        loss = torch.nn.functional.mse_loss(self.lin(batch["x"]), batch["y"])
        return loss, {}


_X = torch.randn(64, 4, generator=torch.Generator().manual_seed(3))
_Y = _X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def _ddp_batch_fn(per_rank):
    from ehrxdiff_core.models.datasets import step_indices

    def batch_fn(step, micro, rank, world):
        idx = step_indices(len(_X), per_rank * world, step, 0)[rank * per_rank : (rank + 1) * per_rank]
        return {"x": _X[idx], "y": _Y[idx]}

    return batch_fn


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from ehrxdiff_core.models.ddp import init_distributed

    info = init_distributed("cpu")
    res = run_training(
        _Linear(),
        _ddp_batch_fn(4),
        TrainLoop(steps=3, batch_size=4, lr=0.05, grad_clip=None, checkpoint_every=100),
        Path(out_dir) / "work",
        {},
        info,
    )
    torch.save(res.model.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes_agree(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    init = _Linear().state_dict()
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k])
        assert not torch.equal(w0[k], init[k])
    # equals one process on the same global batch (DDP averages the two ranks' gradients)
    single = run_training(
        _Linear(),
        _ddp_batch_fn(8),
        TrainLoop(steps=3, batch_size=8, lr=0.05, grad_clip=None, checkpoint_every=100),
        tmp_path / "single",
        {},
        CPU,
    )
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(w0[k], v, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "work" / "checkpoint.pt").exists()

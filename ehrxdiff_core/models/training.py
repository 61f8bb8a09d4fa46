"""The one training loop (VAE, CLIP, LDM, evaluator): accumulation, autocast, clipping, EMA, warmup,
checkpoints with full state, automatic resume, preemption-safe exit, DDP, metrics CSV + loss PNG.

A model plugged in here is an `nn.Module` whose `forward(batch, generator)` returns
`(loss, logs)`; `batch_fn(step, micro, rank, world)` returns the CPU batch for that slot. Every
random draw of a step comes from a generator seeded by (seed, step, micro, rank) and the global
RNG states are checkpointed, so resuming reproduces the uninterrupted loss trajectory.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ehrxdiff_core.atomic import atomic_path
from ehrxdiff_core.config import TrainLoop
from ehrxdiff_core.models.ddp import DistInfo, any_flag, barrier, wrap
from ehrxdiff_core.safe_load import UnsafePickleError, load_tensors

log = logging.getLogger(__name__)

PREEMPT_EXIT_CODE = 143  # 128 + SIGTERM: the job was stopped, a retry resumes from checkpoint.pt


class Preempted(SystemExit):
    """Raised after a checkpoint was written because SIGTERM/SIGUSR1 arrived."""

    def __init__(self) -> None:
        super().__init__(PREEMPT_EXIT_CODE)


@dataclass
class TrainResult:
    model: torch.nn.Module  # unwrapped module with the live weights
    ema: object | None  # diffusers EMAModel over the trainable parameters, or None
    step: int
    metrics: list[dict] = field(default_factory=list)
    work_dir: Path | None = None

    def ema_copy(self) -> torch.nn.Module:
        """A copy of the model holding the EMA weights (the live model when no EMA)."""
        if self.ema is None:
            return self.model
        m = copy.deepcopy(self.model)
        self.ema.copy_to(trainable_params(m))
        return m


def trainable_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def lr_lambda(loop: TrainLoop) -> Callable[[int], float]:
    """Linear warmup, then constant or cosine (with restarts every `cosine_cycle_steps`, as the paper's CLIP)."""

    def f(step: int) -> float:
        cycle = loop.cosine_cycle_steps or loop.steps
        s = step % cycle if loop.cosine_cycle_steps else step
        if loop.warmup_steps and s < loop.warmup_steps:
            return (s + 1) / loop.warmup_steps
        if loop.lr_schedule == "constant":
            return 1.0
        span = max(1, cycle - loop.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (s - loop.warmup_steps) / span)))

    return f


def step_generator(seed: int, step: int, micro: int, rank: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7919 + micro * 104_729 + rank * 15_485_863) % (2**63))
    return g


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _rng_state() -> dict:
    """The global RNG states as tensors and plain values, so that the checkpoint loads with `weights_only=True`."""
    np_state = np.random.get_state(legacy=False)  # MT19937: key (624 uint32), position, cached Gaussian
    state = {
        "python": random.getstate(),  # (version, tuple of ints, float or None): plain already
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resume_key(config: dict) -> str:
    """Config identity for resuming: everything except the step count (so a run may be extended)."""
    c = copy.deepcopy(config)
    if isinstance(c.get("train"), dict):
        c["train"].pop("steps", None)
    return json.dumps(c, sort_keys=True, default=str)


def write_metrics(rows: list[dict], csv_path: Path, png_path: Path | None = None) -> None:
    """metrics.csv (one row per step) and a loss-curve PNG, both written atomically."""
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    if png_path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="loss")
    k = max(1, len(loss) // 20)
    if len(loss) > k:
        ax.plot(steps[k - 1 :], np.convolve(loss, np.ones(k) / k, mode="valid"), lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if (loss > 0).all() else "linear")
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def save_checkpoint(path: Path, model, ema, opt, sched, step: int, config: dict, metrics: list[dict]) -> None:
    """Everything a resume needs, as tensors and plain containers only: `load_checkpoint` reads it without
    unpickling code."""
    state = {
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": _rng_state(),
        "step": step,
        "config": json.loads(json.dumps(config, default=str)),  # plain containers, as the resume key sees it
        "resume_key": _resume_key(config),
        "metrics": [{k: (v if isinstance(v, int | str | None) else float(v)) for k, v in r.items()} for r in metrics],
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, config: dict, name: str) -> dict | None:
    """The state saved at `path` when it can be resumed: read with `weights_only=True` and written for `config`.

    A checkpoint that pickles anything else (an older format, or a crafted file) is not unpickled, and
    one written for another config is not used; either is a warning, and training starts fresh.
    """
    try:
        state = load_tensors(path)
    except UnsafePickleError as err:
        log.warning("%s: ignoring %s; starting fresh", name, err)
        return None
    if not isinstance(state, dict) or state.get("resume_key") != _resume_key(config):
        log.warning("%s: ignoring %s (written for a different config); starting fresh", name, path)
        return None
    return state


def _make_ema(params: list[torch.nn.Parameter], loop: TrainLoop):
    """diffusers' EMA of the trainable parameters when `train.ema_decay` is set, else None."""
    if not loop.ema_decay:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=loop.ema_decay)


def _resume(
    ckpt_path: Path, config: dict, name: str, model, opt, sched, ema, dev: torch.device
) -> tuple[int, list[dict]] | None:
    """Load `ckpt_path` into the model, optimiser, schedule, EMA and global RNGs when it was written for
    `config`; returns (step, metrics so far), or None to start fresh."""
    state = load_checkpoint(ckpt_path, config, name) if ckpt_path.exists() else None
    if state is None:
        return None
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
        ema.to(dev)
    _set_rng_state(state["rng"])
    log.info("%s: resumed from %s at step %d", name, ckpt_path, state["step"])
    return state["step"], [r for r in state["metrics"] if r["step"] < state["step"]]


class _StopSignals(contextlib.AbstractContextManager):
    """Turns SIGTERM / SIGUSR1 (a scheduler's preemption notice) into a flag the loop checks after each
    step; the previous handlers come back on exit. Outside the main thread no handler can be set."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict = {}

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True

    def __enter__(self) -> _StopSignals:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._old[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _checkpoint(
    work_dir: Path, model, ema, opt, sched, step: int, config: dict, metrics: list[dict], info: DistInfo
) -> None:
    """Rank 0 writes `checkpoint.pt`, `metrics.csv` and `loss.png` into `work_dir`; every rank waits."""
    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(work_dir / "checkpoint.pt", model, ema, opt, sched, step, config, metrics)
        write_metrics(metrics, work_dir / "metrics.csv", work_dir / "loss.png")
    barrier(info)


def _train_step(runner, batches, params, opt, sched, ema, loop: TrainLoop, info: DistInfo, step: int) -> dict:
    """One optimiser step over `loop.grad_accum` micro-batches; returns its metrics row."""
    dev = info.device
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    total, logs_sum = 0.0, {}
    for micro in range(loop.grad_accum):
        batch = to_device(next(batches), dev)
        gen = step_generator(loop.seed, step, micro, info.rank, dev)
        last_micro = micro == loop.grad_accum - 1 or not info.enabled  # DDP syncs gradients on the last only
        no_sync = runner.no_sync() if (not last_micro and hasattr(runner, "no_sync")) else contextlib.nullcontext()
        with no_sync, torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda" and loop.bf16):
            loss, logs = runner(batch, gen)
        (loss / loop.grad_accum).backward()
        total += float(loss.detach()) / loop.grad_accum
        for k, v in logs.items():
            logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / loop.grad_accum
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, loop.grad_clip)) if loop.grad_clip else None
    opt.step()
    sched.step()
    if ema is not None:
        ema.step(params)
    row = {"step": step, "loss": total, "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
    if grad_norm is not None:
        row["grad_norm"] = grad_norm
    row.update(logs_sum)
    return row


def run_training(
    model: torch.nn.Module,
    batch_fn: Callable[[int, int, int, int], dict],
    loop: TrainLoop,
    work_dir: str | Path,
    config: dict,
    info: DistInfo,
    *,
    name: str = "train",
    stop_after: int | None = None,
) -> TrainResult:
    """Train `model` for `loop.steps` optimizer steps, resuming from `work_dir/checkpoint.pt` when it matches."""
    work_dir = Path(work_dir)
    ckpt_path = work_dir / "checkpoint.pt"
    dev = info.device
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model.to(dev)
    if loop.channels_last:
        model.to(memory_format=torch.channels_last)
    params = trainable_params(model)
    opt = torch.optim.AdamW(params, lr=loop.lr, betas=loop.betas, eps=loop.eps, weight_decay=loop.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(loop))
    ema = _make_ema(params, loop)

    resumed = _resume(ckpt_path, config, name, model, opt, sched, ema, dev)
    if resumed is None:  # a fresh start draws the same numbers whether or not an unusable checkpoint was there
        torch.manual_seed(loop.seed + info.rank)
    step, metrics = resumed or (0, [])

    runner = wrap(model, info)
    if loop.compile:
        runner = torch.compile(runner)

    last = loop.steps if stop_after is None else min(loop.steps, step + stop_after)
    # the handlers first: batch workers forked below inherit them, so a preemption notice sent to the
    # whole job does not kill a worker before the checkpoint is written
    with _StopSignals() as stop:
        batches = _prefetch(batch_fn, step, last, loop, info)
        bar = tqdm(total=loop.steps, initial=step, desc=name, disable=not info.is_main, mininterval=2.0)
        with bar:
            model.train()
            while step < last:
                row = _train_step(runner, batches, params, opt, sched, ema, loop, info, step)
                metrics.append(row)
                step += 1
                bar.update(1)
                if info.is_main and step % loop.log_every == 0:
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                    log.info("%s step %d loss %.5f", name, step, row["loss"])
                if any_flag(stop.requested, info):
                    _checkpoint(work_dir, model, ema, opt, sched, step, config, metrics, info)
                    log.warning("%s: signal received; checkpoint written at step %d, exiting", name, step)
                    raise Preempted()
                if step % loop.checkpoint_every == 0 or step == last:
                    _checkpoint(work_dir, model, ema, opt, sched, step, config, metrics, info)
    model.eval()
    return TrainResult(model=model, ema=ema, step=step, metrics=metrics, work_dir=work_dir)


class _StepBatches(torch.utils.data.Dataset):
    """Item i = the batch of the i-th (step, micro) slot, so DataLoader workers can build batches ahead."""

    def __init__(self, batch_fn, slots, info: DistInfo):
        self.batch_fn, self.slots, self.info = batch_fn, slots, info

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, i: int) -> dict:
        step, micro = self.slots[i]
        return self.batch_fn(step, micro, self.info.rank, self.info.world_size)


def _prefetch(batch_fn, first: int, last: int, loop: TrainLoop, info: DistInfo):
    """Batches in (step, micro) order: built inline, or by `loop.num_workers` DataLoader workers."""
    slots = [(s, m) for s in range(first, last) for m in range(loop.grad_accum)]
    if loop.num_workers == 0:
        return (batch_fn(s, m, info.rank, info.world_size) for s, m in slots)
    loader = torch.utils.data.DataLoader(
        _StepBatches(batch_fn, slots, info),
        batch_size=None,
        shuffle=False,
        num_workers=loop.num_workers,
        pin_memory=info.device.type == "cuda",
        prefetch_factor=2,
    )
    state = (
        torch.get_rng_state()
    )  # creating the iterator draws a worker seed; keep the run's RNG stream as without workers
    it = iter(loader)
    torch.set_rng_state(state)
    return it

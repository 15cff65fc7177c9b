"""The one training engine, for MAE and i-MAE.

``pretrain(cfg, out)`` trains into a run directory and returns it. AdamW(0.9, 0.95) with
lr = blr * batch * accum / 256, linear warmup then half-cosine (per step), gradient accumulation that still
steps at the end of an epoch shorter than one accumulation group, bf16 autocast on CUDA (fp32 on CPU),
metrics per step (every ``log_every`` steps on CUDA, to avoid a host sync per step) in ``metrics.jsonl``.

Reliability: a finite-loss guard that names the step, the loss terms and the last good checkpoint;
SIGINT/SIGTERM write a checkpoint and stop; checkpoints are atomic and complete; a run is a pure function of
(config, seed, step), so resuming gives the losses an uninterrupted run gives.
"""

from __future__ import annotations

import copy
import math
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import FORMAT, checkpoint_path, is_imae_checkpoint, load_checkpoint, load_mae_weights, \
    mae_state_dict, save_checkpoint
from .config import RunConfig, derived, fingerprint, validate
from .data.pairs import mix_seed, sample_lambda
from .data.sources import build_source
from .devices import CompiledOrEager, describe_device, resolve_device
from .distributed import DistInfo, all_reduce_max, barrier, init_distributed
from .errors import CheckpointError, NonFiniteLossError, TrainingInterrupted
from .models import IMAE, MaskedAutoencoderViT, freeze_teacher, mae_from_config
from .runs import MetricsLog, open_run_dir

ARCH_FIELDS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
               "decoder_depth", "decoder_num_heads", "mlp_ratio")


def lr_factor(step: int, steps_per_epoch: int, cfg: RunConfig, base_lr: float) -> float:
    """Multiplier of the base lr at optimizer step ``step``: linear warmup, then half-cosine to min_lr."""
    t = cfg.train
    ep = step / steps_per_epoch
    if ep < t.warmup_epochs:
        return ep / t.warmup_epochs
    progress = (ep - t.warmup_epochs) / max(t.epochs - t.warmup_epochs, 1e-8)
    lr = t.min_lr + (base_lr - t.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return lr / base_lr


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """MAE's grouping: no weight decay on biases and other 1-D parameters (norms)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def load_teacher(cfg: RunConfig, device, source: str | None = None) -> tuple[MaskedAutoencoderViT, str]:
    """The frozen MAE teacher named by ``cfg.imae.teacher`` (or ``source``: an MAE's ``train.init_from``) and
    its fingerprint; checks the architecture."""
    path = checkpoint_path(source or cfg.imae.teacher)
    ckpt = load_checkpoint(path)
    if is_imae_checkpoint(ckpt):
        tcfg = ckpt["config"]
        if tcfg["train"]["method"] != "mae":
            raise CheckpointError(f"the teacher {path} is an i-MAE checkpoint; the teacher must be a vanilla MAE")
        diff = [f"{k}={tcfg['model'][k]} (teacher) vs {getattr(cfg.model, k)} (student)" for k in ARCH_FIELDS
                if tcfg["model"][k] != getattr(cfg.model, k)]
        if diff:
            raise CheckpointError(
                f"the teacher {path} does not match the student's architecture: {'; '.join(diff)}. Fix: train "
                f"the teacher with the same preset (teacher preset: {tcfg.get('preset')}, student: {cfg.preset})")
        if not ckpt.get("finished"):
            print(f"warning: teacher {path} is an unfinished run (step {ckpt.get('step')})", file=sys.stderr)
    teacher = mae_from_config(cfg.model)
    load_mae_weights(teacher, mae_state_dict(ckpt), source=str(path))
    teacher.checkpoint_step = ckpt.get("step")  # recorded with the fingerprint in the student's checkpoint
    return freeze_teacher(teacher).to(device), teacher_fingerprint(ckpt, path)


def teacher_fingerprint(ckpt: dict, path: Path) -> str:
    """What identifies a teacher in its student's fingerprint: its run's fingerprint (and step while
    unfinished: the finished teacher is another teacher), or the name and size of an external file."""
    if is_imae_checkpoint(ckpt):
        return ckpt["fingerprint"] if ckpt.get("finished") else f"{ckpt['fingerprint']}@step{ckpt.get('step')}"
    return f"external:{path.name}:{path.stat().st_size}"


def build_model(cfg: RunConfig, teacher: MaskedAutoencoderViT | None) -> torch.nn.Module:
    torch.manual_seed(cfg.train.seed)
    mae = mae_from_config(cfg.model)
    if cfg.method == "mae":
        if teacher is not None:  # train.init_from: an MAE continued from a trained one
            mae.load_state_dict(teacher.state_dict())
            mae.norm_pix_loss = cfg.model.norm_pix_loss
        return mae
    if cfg.imae.init == "teacher":
        mae.load_state_dict(teacher.state_dict())
        mae.norm_pix_loss = cfg.model.norm_pix_loss
    i = cfg.imae
    weights = {k: getattr(i, k) for k in ("w_rec_sub", "w_rec_dom", "w_distill_sub", "w_distill_dom")}
    return IMAE(mae, weights=weights, teacher_input=i.teacher_input, batched=cfg.train.batched)


class _Signals:
    """Turns SIGINT/SIGTERM into a flag checked at step boundaries (a second signal interrupts at once)."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class Trainer:
    """Owns the model, optimiser, schedule and position of one run; see :func:`pretrain`."""

    def __init__(self, cfg: RunConfig, run_dir: Path, *, fp: str, device: torch.device, info: DistInfo,
                 teacher: MaskedAutoencoderViT | None, progress: bool = True, teacher_fp: str | None = None):
        self.cfg, self.run_dir, self.fp, self.device, self.info = cfg, Path(run_dir), fp, device, info
        self.teacher_fp = teacher_fp  # recorded in the checkpoint; evaluation verifies the teacher against it
        t = cfg.train
        self.model = build_model(cfg, teacher).to(device)
        # an MAE's init_from start point is only needed to build the model: do not hold it during training
        self.teacher = teacher if cfg.method == "imae" else None
        self.source = build_source(cfg, device=device, pairs=cfg.method == "imae", rank=info.rank,
                                   world=info.world)
        self.local = slice(info.rank * t.batch_size // info.world, (info.rank + 1) * t.batch_size // info.world)
        self.base_lr = derived(cfg, info.world)["lr"]
        self.optimizer = torch.optim.AdamW(param_groups(self.model, t.weight_decay), lr=self.base_lr,
                                           betas=tuple(t.betas), fused=device.type == "cuda")
        self.steps_per_epoch = math.ceil(self.source.num_batches / t.accum_iter)
        self.total_steps = self.steps_per_epoch * t.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.steps_per_epoch, cfg, self.base_lr))
        self.amp = t.amp == "bf16" or (t.amp == "auto" and device.type == "cuda")
        self.log_every = t.log_every or (1 if device.type == "cpu" else 25)
        self.ckpt_path = self.run_dir / "checkpoint.pt"
        self.metrics = MetricsLog(self.run_dir, enabled=info.is_main)
        self.progress = progress and info.is_main
        self.step, self.epoch, self.batch, self.elapsed = 0, 0, 0, 0.0
        self.last_good: int | None = None
        self.keys = ["loss", *(["loss_rec"] if cfg.method == "mae" else IMAE.LOSS_TERMS)]
        self.hardware = describe_device(device) + (f" x {info.world} processes" if info.enabled else "")
        self.ddp = None
        if info.enabled:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        fwd = self.ddp or self.model
        self.forward = CompiledOrEager(fwd) if t.compile else fwd
        self._reset_window()

    # ------------------------------------------------------------------------------------ state
    def state_dict(self, finished: bool = False) -> dict:
        return {
            "format": FORMAT, "config": self.cfg.to_dict(), "fingerprint": self.fp, "finished": finished,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": None,  # bf16 autocast needs no loss scaling
            "step": self.step, "epoch": self.epoch, "batch": self.batch, "elapsed_s": self.elapsed,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": [np.random.get_state()[0], np.random.get_state()[1].tolist(),
                              *np.random.get_state()[2:]],
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "teacher": ({"path": str(self.cfg.imae.teacher), "fingerprint": self.teacher_fp,
                         "step": getattr(self.teacher, "checkpoint_step", None)}
                        if self.cfg.method == "imae" else None),
            "hardware": self.hardware,
        }

    def load_state_dict(self, ckpt: dict) -> None:
        if ckpt.get("fingerprint") != self.fp:
            raise CheckpointError(f"{self.ckpt_path} belongs to another configuration; refusing to resume from it")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step, self.epoch, self.batch = ckpt["step"], ckpt["epoch"], ckpt["batch"]
        self.elapsed = ckpt.get("elapsed_s", 0.0)
        rng = ckpt.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if rng.get("python"):
            random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in rng["python"]))
        if rng.get("numpy"):
            kind, keys, *rest = rng["numpy"]
            np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
        if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.last_good = self.step
        self.metrics.truncate_after(self.step)

    def save(self, finished: bool = False) -> None:
        if self.info.is_main:
            save_checkpoint(self.state_dict(finished), self.ckpt_path)
        # Data parallel: no process may read the run directory (e.g. as the next stage's teacher, or to see
        # that the run finished) before the main process has written it.
        barrier(self.info)
        self.last_good = self.step

    # ------------------------------------------------------------------------------------ steps
    def _forward(self, batch: dict) -> dict:
        """One micro-batch: the mask noise and lambda come from the batch's seed (same on every process)."""
        t, g = self.cfg.train, torch.Generator(device=self.device).manual_seed(mix_seed(batch["seed"], 7))
        noise = torch.rand((t.batch_size, self.model_mae.num_patches), generator=g, device=self.device)
        noise = noise[self.local]
        if self.cfg.method == "mae":
            return self.forward(batch["x_a"], mask_ratio=t.mask_ratio, noise=noise)
        i = self.cfg.imae
        lam = sample_lambda(i.alpha_mode, alpha=i.alpha, alpha_range=i.alpha_range, generator=g, device=self.device)
        return self.forward(batch["x_a"], batch["x_b"], lam, mask_ratio=t.mask_ratio, noise=noise,
                            teacher=self.teacher)

    @property
    def model_mae(self) -> MaskedAutoencoderViT:
        return self.model if self.cfg.method == "mae" else self.model.mae

    def _reset_window(self) -> None:
        self._acc = torch.zeros(len(self.keys), device=self.device)
        self._bad = torch.zeros(len(self.keys) + 2, device=self.device)  # [flag, step, terms...] first bad
        self._acc_n, self._imgs, self._t0 = 0, 0, time.perf_counter()

    def _accumulate(self, out: dict) -> None:
        vec = torch.stack([out[k].detach().float() for k in self.keys])
        self._acc += vec
        new_bad = (~torch.isfinite(vec).all()) & (self._bad[0] == 0)
        record = torch.cat([vec.new_ones(1), vec.new_full((1,), self.step + 1), vec])
        self._bad = torch.where(new_bad, record, self._bad)
        self._acc_n += 1
        self._imgs += self.cfg.train.batch_size

    def _flush(self, bar=None) -> None:
        """Sync point: finite check, metrics line, progress postfix."""
        if self._acc_n == 0:
            return
        acc, bad = self._acc, self._bad
        if self.info.enabled:
            torch.distributed.all_reduce(acc)
            acc = acc / self.info.world
            # the earliest bad step over the processes that saw one (the terms are this process's, if any)
            step = torch.where(bad[0] > 0, bad[1], torch.full_like(bad[1], float("inf"))).reshape(1)
            torch.distributed.all_reduce(step, op=torch.distributed.ReduceOp.MIN)
            flag = bad[:1].clone()
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = torch.cat([flag, step, bad[2:]])
        acc, bad = (acc / self._acc_n).tolist(), bad.tolist()
        now = time.perf_counter()
        self.elapsed += now - self._t0
        if bad[0]:
            terms = dict(zip(self.keys, bad[2:]))
            where = (f"the last good checkpoint is {self.ckpt_path} (step {self.last_good})"
                     if self.last_good is not None and self.ckpt_path.exists() else "no checkpoint was written yet")
            raise NonFiniteLossError(
                f"non-finite loss at step {int(bad[1])}: " + ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
                + f"; {where}. Fix: lower blr, or pass --nonfinite restart-fp32 (nonfinite='restart-fp32') to "
                "retry from that checkpoint without mixed precision",
                step=int(bad[1]), terms=terms, checkpoint=str(self.ckpt_path) if self.last_good is not None else None)
        rec = {"step": self.step, "epoch": round(self.epoch + self.batch / self.source.num_batches, 4)
               if self.batch else self.epoch, "lr": self.base_lr * lr_factor(self.step - 1, self.steps_per_epoch,
                                                                               self.cfg, self.base_lr)}
        rec.update(dict(zip(self.keys, acc)))
        rec["img_per_s"] = self._imgs / max(now - self._t0, 1e-9)
        rec["elapsed_s"] = round(self.elapsed, 3)
        self.metrics.write(rec)
        if bar is not None:
            bar.set_postfix(loss=f"{acc[0]:.4f}", refresh=False)
        self._reset_window()

    # ------------------------------------------------------------------------------------ loop
    def fit(self) -> None:
        t = self.cfg.train
        nb, accum = self.source.num_batches, t.accum_iter
        ckpt_every = t.ckpt_every
        self.model.train()
        with _Signals() as sig:
            while self.epoch < t.epochs:
                epoch, start = self.epoch, self.batch
                bar = tqdm(total=nb, initial=start, desc=f"{t.method} epoch {epoch + 1}/{t.epochs}",
                           disable=not self.progress, file=sys.stderr, mininterval=1.0, leave=False)
                for b, batch in enumerate(self.source.batches(epoch, start), start=start):
                    group = (b // accum) * accum
                    gsize = min(accum, nb - group)
                    last = b + 1 - group == gsize
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                        out = self._forward(batch)
                    loss = out["loss"] / gsize
                    if self.ddp is not None and not last:
                        with self.ddp.no_sync():
                            loss.backward()
                    else:
                        loss.backward()
                    self._accumulate(out)
                    bar.update(1)
                    if not last:
                        continue
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scheduler.step()
                    self.step += 1
                    self.epoch, self.batch = (epoch + 1, 0) if b + 1 == nb else (epoch, b + 1)
                    due = ckpt_every and self.step % ckpt_every == 0
                    if self.step % self.log_every == 0 or due or self.batch == 0:
                        self._flush(bar)
                    if due:
                        self.save()
                    if self.info.enabled:  # all processes must agree, at the same step, to stop
                        on_log_step = self.step % self.log_every == 0
                        stop = all_reduce_max(sig.signum or 0, self.info, self.device) if on_log_step else 0
                    else:
                        stop = sig.signum or 0
                    if stop:
                        self._flush(bar)
                        self.save()
                        bar.close()
                        name = signal.Signals(int(stop)).name
                        raise TrainingInterrupted(
                            f"{name} received: stopped at step {self.step}/{self.total_steps} and wrote "
                            f"{self.ckpt_path}. Resume by running the same command again (or --resume)",
                            signum=int(stop), checkpoint=str(self.ckpt_path))
                bar.close()
                if not ckpt_every and self.epoch < t.epochs:
                    self.save()
        self._flush()
        self.save(finished=True)


def pretrain(cfg: RunConfig, out, *, resume: bool = True, overwrite: bool = False, progress: bool = True) -> Path:
    """Train ``cfg`` into the run directory ``out`` and return it.

    A finished run with the same configuration is returned at once (notebooks use this as a cache); an
    unfinished one is resumed from its checkpoint when ``resume``; a directory of another configuration is
    refused unless ``overwrite``.
    """
    validate(cfg)
    info = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device, info)
    teacher, tfp = None, None
    if cfg.method == "imae" and cfg.imae.teacher:
        teacher, tfp = load_teacher(cfg, device)
    elif cfg.method == "mae" and cfg.train.init_from:
        teacher, tfp = load_teacher(cfg, device, cfg.train.init_from)  # only its weights are used
    fp = fingerprint(cfg, tfp)
    run_dir = open_run_dir(out, cfg, fp, derived=derived(cfg, info.world), overwrite=overwrite,
                           write=info.is_main)
    barrier(info)  # the other processes read the directory only once the main one has prepared it
    if not resume and info.is_main:  # start over: what is there belongs to this config, but is not wanted
        for name in ("checkpoint.pt", "metrics.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
    barrier(info)
    event = None
    while True:
        ckpt = None
        if (run_dir / "checkpoint.pt").exists():
            ckpt = load_checkpoint(run_dir / "checkpoint.pt")
            if ckpt.get("finished"):
                return run_dir
        trainer = Trainer(cfg, run_dir, fp=fp, device=device, info=info, teacher=teacher, progress=progress,
                          teacher_fp=tfp)
        if ckpt is not None:
            trainer.load_state_dict(ckpt)
        elif info.is_main:
            trainer.metrics.reset()
        if event is not None:
            trainer.metrics.write(event)
        try:
            trainer.fit()
            return run_dir
        except NonFiniteLossError as e:
            if cfg.train.nonfinite != "restart-fp32" or not trainer.amp or event is not None:
                raise
            where = f"the checkpoint of step {trainer.last_good}" if trainer.last_good is not None else "the start"
            print(f"warning: {e}\nrestarting from {where} in fp32", file=sys.stderr)
            event = {"step": trainer.last_good or 0, "event": "restart-fp32", "bad_step": e.step}
            cfg = copy.deepcopy(cfg)
            cfg.train.amp = "off"

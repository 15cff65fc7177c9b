"""The one training engine, for MAE and i-MAE.

``pretrain(cfg, out)`` trains into a run directory and returns it. AdamW(0.9, 0.95) with
lr = blr * batch * accum / 256, linear warmup then half-cosine (per step), gradient accumulation that still
steps at the end of an epoch shorter than one accumulation group, bf16 autocast on CUDA (fp32 on CPU),
metrics per step (every ``log_every`` steps on CUDA, to avoid a host sync per step) in ``metrics.jsonl``.

Reliability: a finite-loss guard that names the step, the loss terms and the last good checkpoint;
SIGINT/SIGTERM write a checkpoint and stop; checkpoints are atomic and complete; a run is a pure function of
(config, seed, step), so resuming gives the losses an uninterrupted run gives. One process trains a run folder
at a time (a lock; a second gets one line naming the first); the folder is claimed (``config.yaml`` written)
only once the data and model are built and the disk has room for two checkpoints; a failure of the machine
(disk full, read-only, no permission) is one line naming the checkpoint that is intact.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import time
from pathlib import Path
from typing import Iterator, NoReturn

import torch
from tqdm import tqdm

from .checkpoint import CHECKPOINT_NAME, FORMAT, load_checkpoint, load_teacher, restore_rng, rng_state, save_checkpoint
from .config import RunConfig, derived, fingerprint, validate
from .data.pairs import mix_seed, sample_lambda
from .data.sources import build_source
from .devices import CompiledOrEager, describe_device, resolve_device
from .distributed import DistInfo, all_reduce_max, barrier, init_distributed
from .errors import CheckpointError, NonFiniteLossError, TrainingInterrupted, os_reason, storage_error
from .losswindow import LossWindow
from .models import IMAE, MaskedAutoencoderViT, imae_from_config, mae_from_config
from .runs import (CONFIG_NAME, FolderLock, MetricsLog, StopSignals, check_free_space, check_run_dir, claim_run_dir,
                   read_run_config)
from .schedule import warmup_cosine

def lr_factor(step: int, steps_per_epoch: int, cfg: RunConfig, base_lr: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (for ``LambdaLR``): the
    :func:`~imae.schedule.warmup_cosine` of epochs, as a fraction of the base during warmup, then the
    absolute lr divided by the base."""
    t = cfg.train
    ep = step / steps_per_epoch
    if ep < t.warmup_epochs:
        return warmup_cosine(ep, warmup=t.warmup_epochs, total=t.epochs, peak=1.0)
    return warmup_cosine(ep, warmup=t.warmup_epochs, total=t.epochs, peak=base_lr, floor=t.min_lr) / base_lr


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """MAE's grouping: no weight decay on biases and other 1-D parameters (norms)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_model(cfg: RunConfig, teacher: MaskedAutoencoderViT | None) -> torch.nn.Module:
    """The model to train, seeded by ``train.seed``: an MAE (from ``teacher``'s weights when it continues one,
    ``train.init_from``) or an i-MAE around an MAE initialised from its teacher (``imae.init``)."""
    torch.manual_seed(cfg.train.seed)
    mae = mae_from_config(cfg.model)
    if teacher is not None and (cfg.method == "mae" or cfg.imae.init == "teacher"):
        mae.load_state_dict(teacher.state_dict())
        mae.norm_pix_loss = cfg.model.norm_pix_loss
    return mae if cfg.method == "mae" else imae_from_config(cfg, mae)


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
        # bars only where someone watches: not into a log file, a notebook's stderr or a CI job
        self.progress = progress and info.is_main and _is_terminal(sys.stderr)
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
        self.window = LossWindow(self.keys, device, t.batch_size)

    # ------------------------------------------------------------------------------------ state
    def intact(self) -> str:
        """What is safe if this run stops now on a failure of the machine, in words for a message."""
        if self.last_good is not None and self.ckpt_path.exists():
            return (f"the last complete checkpoint, {self.ckpt_path} (step {self.last_good}), is intact: the same "
                    f"command resumes from it")
        return "no checkpoint was written yet: the same command starts the run again"

    def checkpoint_bytes(self) -> int:
        """About how large this run's checkpoint is: the model's tensors, AdamW's two moments of every
        trained parameter, and a margin for the rest (RNG states, config, zip headers)."""
        model = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        moments = sum(2 * p.numel() * 4 for p in self.model.parameters() if p.requires_grad)
        return model + moments + 256 * 1024

    def state_dict(self, finished: bool = False) -> dict:
        return {
            "format": FORMAT, "config": self.cfg.to_dict(), "fingerprint": self.fp, "finished": finished,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": None,  # bf16 autocast needs no loss scaling
            "step": self.step, "epoch": self.epoch, "batch": self.batch, "elapsed_s": self.elapsed,
            "rng": rng_state(),
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
        restore_rng(ckpt.get("rng"))
        self.last_good = self.step
        self.metrics.truncate_after(self.step)

    def start(self, ckpt: dict | None) -> None:
        """Resume from ``ckpt`` (the folder's checkpoint), or start afresh with an empty metrics log."""
        if ckpt is not None:
            self.load_state_dict(ckpt)
        elif self.info.is_main:
            self.metrics.reset()

    def save(self, finished: bool = False) -> None:
        if self.info.is_main:
            save_checkpoint(self.state_dict(finished), self.ckpt_path, intact=self.intact())
        # Data parallel: no process may read the run directory (e.g. as the next stage's teacher, or to see
        # that the run finished) before the main process has written it.
        barrier(self.info)
        self.last_good = self.step

    # ------------------------------------------------------------------------------------ steps
    def _forward(self, batch: dict) -> dict:
        """One micro-batch: the mask noise and lambda come from the batch's seed (same on every process);
        a batch may also bring its own ``noise`` (this process's rows, (B, L)), e.g. to replay a step."""
        t, g = self.cfg.train, torch.Generator(device=self.device).manual_seed(mix_seed(batch["seed"], 7))
        noise = torch.rand((t.batch_size, self.model_mae.num_patches), generator=g, device=self.device)
        noise = batch["noise"].to(self.device) if "noise" in batch else noise[self.local]
        if self.cfg.method == "mae":
            return self.forward(batch["x_a"], mask_ratio=t.mask_ratio, noise=noise)
        i = self.cfg.imae
        lam = sample_lambda(i.alpha_mode, alpha=i.alpha, alpha_range=i.alpha_range, generator=g, device=self.device)
        return self.forward(batch["x_a"], batch["x_b"], lam, mask_ratio=t.mask_ratio, noise=noise,
                            teacher=self.teacher)

    def micro_step(self, batch: dict, group_size: int, *, sync: bool = True) -> dict:
        """Forward and backward of one micro-batch, its loss scaled by ``1 / group_size`` so that the gradient
        summed over an accumulation group is that of the group's mean loss; ``sync=False`` skips data
        parallel's gradient all-reduce (every micro-batch of a group but the last). No optimizer step."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self._forward(batch)
        loss = out["loss"] / group_size
        if self.ddp is not None and not sync:
            with self.ddp.no_sync():
                loss.backward()
        else:
            loss.backward()
        self.window.add(out, self.step + 1)
        return out

    @property
    def model_mae(self) -> MaskedAutoencoderViT:
        return self.model if self.cfg.method == "mae" else self.model.mae

    def _flush(self, bar=None) -> None:
        """Sync point: finite check, metrics line, progress postfix."""
        w = self.window
        if w.count == 0:
            return
        means, bad = w.read(self.info)
        now = time.perf_counter()
        self.elapsed += now - w.started
        if bad is not None:
            step, terms = bad
            where = (f"the last good checkpoint is {self.ckpt_path} (step {self.last_good})"
                     if self.last_good is not None and self.ckpt_path.exists() else "no checkpoint was written yet")
            raise NonFiniteLossError(
                f"non-finite loss at step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
                + f"; {where}. Fix: lower blr, or pass --nonfinite restart-fp32 (nonfinite='restart-fp32') to "
                "retry from that checkpoint without mixed precision",
                step=step, terms=terms, checkpoint=str(self.ckpt_path) if self.last_good is not None else None)
        epoch = round(self.epoch + self.batch / self.source.num_batches, 4) if self.batch else self.epoch
        rec = {"step": self.step, "epoch": epoch,
               "lr": self.base_lr * lr_factor(self.step - 1, self.steps_per_epoch, self.cfg, self.base_lr),
               **means, "img_per_s": w.images / max(now - w.started, 1e-9), "elapsed_s": round(self.elapsed, 3)}
        self.metrics.write(rec)
        if bar is not None:
            bar.set_postfix(loss=f"{means['loss']:.4f}", refresh=False)
        w.reset()

    # ------------------------------------------------------------------------------------ loop
    def fit(self) -> None:
        """Train to the end (or to a stop signal, writing a checkpoint first) and write the finished checkpoint."""
        with StopSignals() as sig:
            for _ in self.steps(sig):
                pass
        self.finish()

    def finish(self) -> None:
        """After the last step: the last metrics line and the finished checkpoint."""
        self._flush()
        self.save(finished=True)

    def steps(self, sig: StopSignals) -> Iterator[int]:
        """The training loop, one optimizer step per ``next()`` (it yields the step just taken), so that
        :func:`pretrain_concurrent` can interleave independent runs. ``sig``'s flag stops it at a step boundary:
        it writes a checkpoint and raises :class:`~imae.errors.TrainingInterrupted`."""
        t = self.cfg.train
        nb, accum = self.source.num_batches, t.accum_iter
        ckpt_every = t.ckpt_every
        self.model.train()
        while self.epoch < t.epochs:
            epoch, start = self.epoch, self.batch
            bar = tqdm(total=nb, initial=start, desc=f"{t.method} epoch {epoch + 1}/{t.epochs}",
                       disable=not self.progress, file=sys.stderr, mininterval=1.0, leave=False)
            for b, batch in enumerate(self.source.batches(epoch, start), start=start):
                group = (b // accum) * accum
                gsize = min(accum, nb - group)
                last = b + 1 - group == gsize
                self.micro_step(batch, gsize, sync=last)
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
                yield self.step
            bar.close()
            if not ckpt_every and self.epoch < t.epochs:
                self.save()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _finished_run(run_dir: Path, fp: str) -> bool:
    """Whether ``run_dir`` holds the finished run of fingerprint ``fp`` (only reads)."""
    if not (run_dir / CONFIG_NAME).is_file() or not (run_dir / CHECKPOINT_NAME).is_file():
        return False
    if read_run_config(run_dir).get("fingerprint") != fp:
        return False
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    return bool(ckpt.get("finished")) and ckpt.get("fingerprint") == fp


def pretrain(cfg: RunConfig, out, *, resume: bool = True, overwrite: bool = False, progress: bool = True) -> Path:
    """Train ``cfg`` into the run directory ``out`` and return it.

    A finished run with the same configuration is returned at once (notebooks use this as a cache; it is only
    read, so it may lie on read-only storage); an unfinished one is resumed from its checkpoint when
    ``resume``; a directory of another configuration is refused unless ``overwrite`` (or unless nothing was
    trained in it: a start that failed claims nothing).

    While it trains, the process holds the folder's lock: a second process training the same folder gets a
    :class:`~imae.errors.RunLockedError` naming this one, before it writes anything. Failures of the machine
    are :class:`~imae.errors.StorageError` s naming the checkpoint that is intact.
    """
    validate(cfg)
    info = init_distributed(cfg.train.device)
    device = resolve_device(cfg.train.device, info)
    job = _Job(cfg, out, info=info, device=device)
    try:
        if job.open(resume=resume, overwrite=overwrite, progress=progress):
            return job.run_dir
        return _train(cfg, job.run_dir, job.trainer, fp=job.fp, device=device, info=info, teacher=job.teacher,
                      tfp=job.tfp, progress=progress)
    except OSError as e:
        job.reraise(e)
    finally:
        job.release()


class _Job:
    """One run folder being prepared for training: its teacher, fingerprint, lock and :class:`Trainer`."""

    def __init__(self, cfg: RunConfig, out, *, info: DistInfo, device: torch.device):
        self.cfg, self.run_dir, self.info, self.device = cfg, Path(out), info, device
        self.teacher, self.tfp = None, None
        if cfg.method == "imae" and cfg.imae.teacher:
            self.teacher, self.tfp = load_teacher(cfg, device)
        elif cfg.method == "mae" and cfg.train.init_from:
            self.teacher, self.tfp = load_teacher(cfg, device, cfg.train.init_from)  # only its weights are used
        self.fp = fingerprint(cfg, self.tfp)
        self.lock = None
        self.trainer: Trainer | None = None

    def open(self, *, resume: bool, overwrite: bool, progress: bool) -> bool:
        """Lock and claim the folder and build the trainer; True when the run is finished already (nothing to
        train). Everything that can fail on the user's input (data, model, batch size) is built before the
        folder is claimed, so a failed start leaves nothing that blocks the corrected command."""
        cfg, run_dir, info = self.cfg, self.run_dir, self.info
        if resume and _finished_run(run_dir, self.fp):
            return True
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.lock = FolderLock.for_run(run_dir).acquire()  # before anything in the folder is read or written
        state = check_run_dir(run_dir, cfg, self.fp, overwrite=overwrite)
        if state == "same" and resume and _finished_run(run_dir, self.fp):  # finished while we waited for the lock
            return True
        self.trainer = Trainer(cfg, run_dir, fp=self.fp, device=self.device, info=info, teacher=self.teacher,
                               progress=progress, teacher_fp=self.tfp)
        if info.is_main:
            existing = run_dir / CHECKPOINT_NAME
            keep = state == "same" and resume and existing.is_file()
            check_free_space(run_dir, 2 * max(self.trainer.checkpoint_bytes(), existing.stat().st_size if keep else 0),
                             what="training (room for two checkpoints, so one is always complete)",
                             intact=(f"The checkpoint {existing} is untouched" if keep else None))
            claim_run_dir(run_dir, cfg, self.fp, derived=derived(cfg, info.world), state=state, fresh=not resume)
        barrier(info)  # the other processes read the directory only once the main one has prepared it
        return False

    def storage_error(self, e: OSError) -> BaseException:
        """``e`` as the one-line failure of the machine that names what is intact (other errors unchanged)."""
        if os_reason(e) is None:
            return e
        intact = self.trainer.intact() if self.trainer is not None else "nothing was trained yet"
        return storage_error(e, doing="training into", path=self.run_dir, intact=intact)

    def reraise(self, e: OSError) -> NoReturn:
        """Raise ``e``: as the one-line failure of the machine where it is one, else unchanged."""
        err = self.storage_error(e)
        if err is e:
            raise e
        raise err from e

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def pretrain_concurrent(cfgs: list[RunConfig], outs: list, *, resume: bool = True, progress: bool = False
                        ) -> list[Path]:
    """Train independent runs in ONE process, one optimizer step of each in turn, and return their folders.

    On a GPU each run steps on its own CUDA stream, so the kernels of one run can fill the gaps the other
    leaves (a small model such as ViT-T/2 leaves much of an H100 idle); on a CPU the runs simply alternate.
    Each run is exactly what :func:`pretrain` would train (same folder, fingerprint, checkpoints and losses:
    every random draw of a step comes from generators seeded by (config, seed, step), and each model is built
    from its own seed), so a run started here may be resumed by :func:`pretrain` and the other way round.
    Finished runs are skipped; an i-MAE's teacher must be finished before (runs here do not wait for each
    other). A stop signal stops every run at its next step boundary, each writing its checkpoint. A run that
    fails (e.g. a non-finite loss: no fp32 restart here) stops alone; the others train on and the first
    failure is raised at the end. Single process only (no data parallel).
    """
    if len(cfgs) != len(outs):
        raise ValueError(f"{len(cfgs)} configurations for {len(outs)} folders; give one folder per run")
    folders = [Path(o).resolve() for o in outs]
    if len(set(folders)) != len(folders):
        raise ValueError("two runs share a folder; give each run its own")
    jobs: list[_Job] = []
    try:
        for cfg, out in zip(cfgs, outs):
            validate(cfg)
            info = init_distributed(cfg.train.device)
            if info.enabled:
                raise ValueError("pretrain_concurrent trains in one process; launch data-parallel runs with pretrain")
            job = _Job(cfg, out, info=info, device=resolve_device(cfg.train.device, info))
            jobs.append(job)
            try:
                if not job.open(resume=resume, overwrite=False, progress=progress):
                    ckpt = job.run_dir / CHECKPOINT_NAME
                    job.trainer.start(load_checkpoint(ckpt) if ckpt.exists() else None)
            except OSError as e:
                job.reraise(e)
        _interleave([j for j in jobs if j.trainer is not None])
    finally:
        for job in jobs:
            job.release()
    return [j.run_dir for j in jobs]


def _interleave(jobs: list[_Job]) -> None:
    """One step of each job's trainer in turn until all have finished; see :func:`pretrain_concurrent`."""
    import contextlib

    streams = {}
    for job in jobs:
        if job.device.type == "cuda":
            streams[id(job)] = torch.cuda.Stream(job.device)
            streams[id(job)].wait_stream(torch.cuda.current_stream(job.device))  # its data and model are ready
    failures: list[tuple[_Job, BaseException]] = []
    with StopSignals() as sig:
        loops = {id(j): (j, j.trainer.steps(sig)) for j in jobs}
        while loops:
            for key, (job, loop) in list(loops.items()):
                ctx = torch.cuda.stream(streams[key]) if key in streams else contextlib.nullcontext()
                try:
                    with ctx:
                        try:
                            next(loop)
                            continue
                        except StopIteration:
                            job.trainer.finish()
                except Exception as e:  # noqa: BLE001 - one run's failure must not cost the others
                    failures.append((job, job.storage_error(e) if isinstance(e, OSError) else e))
                del loops[key]
    for s in streams.values():
        torch.cuda.current_stream(s.device).wait_stream(s)
    stopped = [(j, e) for j, e in failures if isinstance(e, TrainingInterrupted)]
    if stopped and len(stopped) == len(failures):
        first = stopped[0][1]
        raise TrainingInterrupted(
            f"stopped {len(stopped)} run(s) at a step boundary, each with its checkpoint written "
            f"({', '.join(str(j.trainer.ckpt_path) for j, _ in stopped)}). Resume by running the same command again",
            signum=first.signum, checkpoint=first.checkpoint)
    errors = [(j, e) for j, e in failures if not isinstance(e, TrainingInterrupted)]
    if errors:
        job, e = errors[0]
        if len(errors) > 1:
            print(f"warning: {len(errors)} of {len(jobs)} concurrent runs failed; raising the first "
                  f"({job.run_dir}); the others: " + "; ".join(f"{j.run_dir}: {x}" for j, x in errors[1:]),
                  file=sys.stderr)
        raise e


def _train(cfg: RunConfig, run_dir: Path, trainer: Trainer, *, fp: str, device, info: DistInfo, teacher, tfp,
           progress: bool) -> Path:
    """The training loop of :func:`pretrain` over a claimed folder: resume or start, and on a non-finite loss
    with ``nonfinite=restart-fp32`` restart once from the last good checkpoint without mixed precision."""
    event = None
    while True:
        ckpt = None
        if (run_dir / "checkpoint.pt").exists():
            ckpt = load_checkpoint(run_dir / "checkpoint.pt")
            if ckpt.get("finished"):
                return run_dir
        if trainer is None:
            trainer = Trainer(cfg, run_dir, fp=fp, device=device, info=info, teacher=teacher, progress=progress,
                              teacher_fp=tfp)
        trainer.start(ckpt)
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
            trainer = None

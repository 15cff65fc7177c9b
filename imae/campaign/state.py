"""A window's state: its settings (:class:`CampaignConfig`) and everything it learns and holds (:class:`Window`).

One :class:`Window` is opened per run (:func:`open_window`) and passed to the plain functions of the steps:
:func:`~imae.campaign.preflight.preflight`, :func:`~imae.campaign.measure.smoke_and_measure`,
:func:`~imae.campaign.planner.plan_stage`, :func:`~imae.campaign.steps.run_stage` (which packs each finished
stage) and :func:`~imae.campaign.runner.run_campaign`, which calls them in order. Nothing else is shared.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..paths import repo_root
from .manifest import CampaignError, Manifest
from .packing import Packer
from .stages import Stage, check_stage_names, default_stages
from .watchdog import Clock, Watchdog


@dataclass
class CampaignConfig:
    """Everything one window needs (the command line fills it from its flags)."""

    out: Path
    preset: str = "cifar"
    budget_s: float = 500.0
    work: Path | None = None  # run folders, stage folders (default: runs/campaign-<preset>)
    manifest: Path | None = None  # default: <repo>/campaign/<preset>/manifest.json
    weights_dir: Path | None = None  # stored weights of finished stages (default: <manifest folder>/weights)
    data_root: Path | None = None  # default: the config's
    stages: list[str] | None = None  # default: every stage, in order
    device: str = "auto"
    compile: str = "auto"  # auto | on | off
    overrides: dict = field(default_factory=dict)  # config overrides for every model
    epochs: dict = field(default_factory=dict)  # forced epochs of free stages, by method
    max_epochs: dict = field(default_factory=dict)  # caps, by method (default: the preset's)
    min_epochs: int = 1
    eval_extra: dict = field(default_factory=dict)  # {"*"|what: {option: value}}
    reserve_s: float | None = None  # the watchdog fires this long before the deadline
    eval_share: float = 0.3  # at most this part of the budget is held back for evaluations while planning training
    train_fraction: float = 0.7  # free-epoch training takes at most this part of the budget, so that a later
    #                              window can retrain both models (a seed stage) with their evaluations
    smoke_steps: int = 8
    smoke_epochs: int = 3
    throughput_args: list = field(default_factory=list)
    throughput_estimate_s: float | None = None
    throughput_script: Path | None = None  # default: the repository's benchmarks/throughput.py
    started: float | None = None  # monotonic time the budget counts from (default: now)
    argv: list | None = None
    # Extension points (defaults: none needed on a GPU node with the data in place):
    packer: Callable[[Path], Packer] = Packer  # writes each stage's archive into an output folder
    prepare_data: Callable[["Window"], Path | None] | None = None  # puts the data in place; returns its root
    max_model_bytes: int | None = None  # refuse stored weights larger than this


class Log:
    """Timestamped lines to stderr and ``<out>/campaign.log``."""

    MAX_BYTES = 4 * 2**20

    def __init__(self, path: Path, clock: Clock):
        self.path, self.clock = path, clock
        self.path.write_text("")

    def __call__(self, msg: str) -> None:
        line = f"[{self.clock.elapsed():7.1f}s] {msg}"
        print(line, file=sys.stderr, flush=True)
        if self.path.stat().st_size < self.MAX_BYTES:
            with open(self.path, "a") as f:
                f.write(line + "\n")


# One linear_classifier fit (9 penalties + refit, L-BFGS) on 5k-10k rows x 192 features, 10 classes: latency-bound
# on a GPU, about the same for every model. Measured on an H200 with the fits one after the other (campaign window
# 1): semantics 104.5 s and 97.0 s for 42 fits + ~5 s of forwards and loading; linear-probe 7.6-8.1 s for 2 fits +
# ~3 s of features (knn: 2.9-3.3 s), i.e. ~2.3 s a fit. Since the fits run concurrently on CUDA
# (probes.linear_classifiers), and their L-BFGS now waits for the device once per function evaluation instead of
# ~40 times per iteration (imae.metrics.lbfgs), this is an upper bound until an observed evaluation replaces it.
PRIOR_FIT_S = 2.3


@dataclass
class Measured:
    """What the smoke steps measured on this machine."""

    img_per_s: dict = field(default_factory=dict)  # method -> steady training rate
    overhead_s: dict = field(default_factory=dict)  # method -> a training stage's fixed cost
    compiled_img_per_s: dict = field(default_factory=dict)  # method -> steady rate under torch.compile
    compile_s: dict = field(default_factory=dict)  # method -> measured compile time
    fwd_img_per_s: float = 0.0  # unmasked encoder forwards (evaluation)
    eval_fixed_s: float = 1.0  # per evaluation: model and data loading
    export_s: float = 0.5  # fp16 export + archive of one model
    fit_s: float = PRIOR_FIT_S  # one linear-classifier fit (a prior, not measured by the smoke steps)

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else {m: round(x, 3) for m, x in v.items()})
                for k, v in vars(self).items()}


@dataclass
class Window:
    """One window's state, passed to every step function (see the module docstring)."""

    cfg: CampaignConfig
    out: Path
    work: Path
    manifest_path: Path
    weights_dir: Path
    results_dir: Path
    device: Any  # torch.device
    stages: list[Stage]  # every stage of the preset, in order
    selected: list[str]  # the stages this window may run, in order
    clock: Clock
    reserve_s: float
    log: Callable[[str], None] = print
    manifest: Manifest | None = None
    record: dict = field(default_factory=dict)  # this window's entry in the manifest's "windows"
    packer: Packer | None = None
    watchdog: Watchdog | None = None
    measured: Measured = field(default_factory=Measured)
    models: dict = field(default_factory=dict)  # resolved model refs of this window -> run dirs
    stage_models: dict = field(default_factory=dict)  # the running stage's models ("@key" refs) -> run dirs
    common: dict = field(default_factory=dict)  # overrides every model of the window gets (set by preflight)
    data_root: Path | None = None
    n_train: int = 0
    n_test: int = 0
    n_classes: int = 0
    images_per_epoch: int = 0
    failures: list = field(default_factory=list)
    free_train_s: float = 0.0  # wall time of free-epoch training in this window
    # seconds by activity (imae.campaign.runner.breakdown): steady training, a training's start-up beyond it
    # (compile, warm-up), evaluations, the throughput benchmark, exporting and archiving
    spent: dict = field(default_factory=lambda: dict.fromkeys(
        ("training", "startup", "evaluation", "benchmark", "pack"), 0.0))

    @property
    def preset(self) -> str:
        return self.cfg.preset

    @property
    def device_name(self) -> str:
        from ..devices import describe_device

        return describe_device(self.device)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def open_window(cfg: CampaignConfig) -> Window:
    """The window's state before anything runs: settings checked, paths resolved, stages chosen."""
    from ..config import PRESETS
    from ..devices import resolve_device

    if cfg.preset not in PRESETS:
        raise CampaignError(f"unknown preset {cfg.preset!r}; choose one of {sorted(PRESETS)}")
    if cfg.budget_s <= 0:
        raise CampaignError(f"--budget-s must be positive, got {cfg.budget_s}")
    if cfg.compile not in ("auto", "on", "off"):
        raise CampaignError(f"--compile {cfg.compile!r}; choose auto, on or off")
    manifest_path = Path(cfg.manifest) if cfg.manifest else repo_root() / "campaign" / cfg.preset / "manifest.json"
    stages = default_stages(cfg.preset)
    return Window(
        cfg=cfg, out=Path(cfg.out), work=Path(cfg.work) if cfg.work else Path("runs") / f"campaign-{cfg.preset}",
        manifest_path=manifest_path,
        weights_dir=Path(cfg.weights_dir) if cfg.weights_dir else manifest_path.parent / "weights",
        results_dir=manifest_path.parent / "results", device=resolve_device(cfg.device), stages=stages,
        selected=check_stage_names(cfg.stages or [s.name for s in stages], stages),
        clock=Clock(cfg.budget_s, cfg.started),
        reserve_s=cfg.reserve_s if cfg.reserve_s is not None else max(3.0, 0.03 * cfg.budget_s))


def inputs_of(w: Window, stage: Stage) -> dict:
    """What a stage was computed from: the weights sha256 of the stages it needs."""
    return {n: w.manifest.stage(n).get("result", {}).get("weights_sha256") for n in stage.needs}


def pending(w: Window) -> list[Stage]:
    """The selected stages not done yet (or done from inputs that have changed since), in order."""
    todo = []
    for name in w.selected:
        stage = w.stage(name)
        rec = w.manifest.stage(name)
        if rec.get("status") == "done":
            if rec.get("inputs", {}) == inputs_of(w, stage):
                continue
            w.log(f"stage {name} is done but was computed from other inputs "
                  f"({rec.get('inputs')} != {inputs_of(w, stage)}): it runs again")
        todo.append(stage)
    return todo


def item_key(model_ref: str, what: str) -> str:
    """The manifest key of one evaluation of an itemized stage, e.g. ``untrained-1/knn``."""
    return f"{model_ref.lstrip('@').replace(':', '-')}/{what}"


def item_done(w: Window, stage: Stage, model_ref: str, what: str) -> bool:
    """An evaluation of the stage is recorded and its result lies in the work folder or the repository."""
    key = item_key(model_ref, what)
    done = key in w.manifest.stage(stage.name).get("items", {})
    path = w.work / "stages" / stage.name / "evals" / f"{key}.json"
    return done and (path.is_file() or (w.results_dir / stage.name / "evals" / f"{key}.json").is_file())


__all__ = ["CampaignConfig", "Log", "Measured", "PRIOR_FIT_S", "Window", "inputs_of", "item_done", "item_key", "open_window",
           "pending"]

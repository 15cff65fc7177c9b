"""One process of the 2-process data-parallel test (launched by torchrun from test_distributed.py).

argv: DATA_ROOT OUT_DIR. Trains the micro MAE, then the micro i-MAE with that MAE as its teacher (the handoff a
pipeline makes: every process must see the finished teacher checkpoint), with the same global batch as the
single-process fixtures, then records how the engine wrapped the models.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from conftest import micro  # the same configs as the single-process fixtures
from imae.checkpoint import load_teacher
from imae.train import Trainer, pretrain
from imae.config import fingerprint
from imae.distributed import init_distributed


def main(root: str, out: str) -> None:
    out = Path(out)
    mae_dir = pretrain(micro(root), out / "mae", progress=False)
    cfg = micro(root, method="imae", **{"imae.teacher": str(mae_dir)})
    imae_dir = pretrain(cfg, out / "imae", progress=False)

    info = init_distributed("cpu")
    teacher, tfp = load_teacher(cfg, torch.device("cpu"))
    tr = Trainer(cfg, imae_dir, fp=fingerprint(cfg, tfp), device=torch.device("cpu"), info=info,
                 teacher=teacher, progress=False)
    ddp_params = {id(p) for p in tr.ddp.parameters()} if tr.ddp is not None else set()
    report = {"rank": info.rank, "world": info.world, "backend": dist.get_backend(),
              "model_wrapped": isinstance(tr.ddp, torch.nn.parallel.DistributedDataParallel),
              "teacher_wrapped": isinstance(tr.teacher, torch.nn.parallel.DistributedDataParallel),
              "teacher_params_in_ddp": any(id(p) in ddp_params for p in tr.teacher.parameters()),
              "teacher_requires_grad": any(p.requires_grad for p in tr.teacher.parameters()),
              "local_batch": tr.local.stop - tr.local.start, "mae_dir": str(mae_dir), "imae_dir": str(imae_dir)}
    (out / f"rank{info.rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    assert os.environ.get("WORLD_SIZE") == "2", "launch with torchrun --nproc_per_node 2"
    main(*sys.argv[1:3])

"""torch.compile's artefacts carried between campaign windows (imae.campaign.compilecache): a second window
loads what the first compiled and inductor finds its graphs cached (a real compile on the CPU, each window in
its own process with its own empty inductor cache); artefacts of another torch or device are left alone with
one log line; a damaged file costs a compile, never the window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imae.campaign import compilecache
from imae.campaign.manifest import CampaignError

REPO = Path(__file__).resolve().parents[1]

WINDOW = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from torch._dynamo.utils import counters
    from imae.campaign import compilecache

    carried, out = Path(sys.argv[1]), Path(sys.argv[2])
    lines = []
    rec = compilecache.load(carried, "cpu", log=lines.append)

    def step(x, w):
        return torch.nn.functional.gelu(x @ w).square().mean()

    x = torch.randn(8, 16, requires_grad=True)
    torch.compile(step)(x, torch.randn(16, 16)).backward()
    rec["saved"] = compilecache.save(out, "cpu", log=lines.append)
    print(json.dumps({"rec": rec, "log": lines, "inductor": dict(counters["inductor"])}))
""")


def _window(carried: Path, out: Path, cache: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", WINDOW, str(carried), str(out)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_second_window_loads_what_the_first_compiled(tmp_path):
    carried = tmp_path / "repo" / "campaign" / "tiny" / compilecache.FOLDER
    first = _window(carried, tmp_path / "out1", tmp_path / "inductor1")
    assert first["rec"]["loaded"] == [] and "compiling afresh" in first["log"][0]
    assert first["inductor"].get("fxgraph_cache_miss", 0) > 0 and not first["inductor"].get("fxgraph_cache_hit")
    saved = first["rec"]["saved"]
    assert saved and (tmp_path / "out1" / compilecache.ARCHIVE).is_file()
    placed = compilecache.collect(tmp_path / "out1", first["rec"], carried.parent, log=lambda *a: None)
    assert placed == [saved["member"]] and saved["member"].startswith(compilecache.device_key("cpu"))

    # the next window, in a fresh process with an empty inductor cache: every graph comes from the carried file
    second = _window(carried, tmp_path / "out2", tmp_path / "inductor2")
    assert second["rec"]["loaded"] == placed and "loaded compile artefacts" in second["log"][0]
    assert second["inductor"].get("fxgraph_cache_hit", 0) > 0 and not second["inductor"].get("fxgraph_cache_miss")
    # its save holds what it loaded, so collecting it replaces the file it loaded: one file per torch and device
    compilecache.collect(tmp_path / "out2", second["rec"], carried.parent, log=lambda *a: None)
    assert [p.name for p in carried.glob("*.bin")] == [second["rec"]["saved"]["member"]]


def test_artefacts_of_another_torch_or_device_are_left_alone(tmp_path):
    (tmp_path / "torch2.11.0-sm_90-0123456789ab.bin").write_bytes(b"compiled elsewhere")
    lines = []
    rec = compilecache.load(tmp_path, "cpu", log=lines.append)
    assert rec["loaded"] == [] and rec["other"] == ["torch2.11.0-sm_90"]
    assert lines == [f"compile artefacts carried for ['torch2.11.0-sm_90'], none for this machine "
                     f"({compilecache.device_key('cpu')}): compiling afresh"]


def test_a_damaged_file_costs_a_compile_not_the_window(tmp_path):
    (tmp_path / f"{compilecache.device_key('cpu')}-0123456789ab.bin").write_bytes(b"not torch's format")
    lines = []
    rec = compilecache.load(tmp_path, "cpu", log=lines.append)
    assert rec["loaded"] == [] and "not loaded" in lines[0] and "compiling afresh" in lines[0]


def test_collect_checks_the_archive(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / compilecache.ARCHIVE).write_bytes(b"damaged in transfer")
    with pytest.raises(CampaignError, match="does not match the sha256"):
        compilecache.collect(out, {"saved": {"file": compilecache.ARCHIVE, "sha256": "0" * 64}}, tmp_path / "dest")
    assert compilecache.collect(out, {"saved": None}, tmp_path / "dest") == []

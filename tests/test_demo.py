"""The demo command, end to end on a tiny budget (the real demo trains for ~13 minutes)."""

from __future__ import annotations

from conftest import tiny_overrides
from siefpn_deploy.cli import main


def test_demo_runs_end_to_end_and_prints_summary(tiny_synth, tmp_path, capsys):
    out = tmp_path / "demo"
    opts = [o for o in tiny_overrides(tiny_synth, out, SOLVER__MAX_ITER=2)]
    # the demo sets DATASETS.* and OUTPUT_DIR itself from --data/--output
    keep = [k for k in zip(opts[::2], opts[1::2]) if not k[0].startswith(("DATASETS.", "OUTPUT_DIR"))]
    flat = [x for kv in keep for x in kv]
    assert main(["demo", "--data", str(tiny_synth), "--output", str(out), *flat]) == 0
    text = capsys.readouterr().out
    assert "| train + eval |" in text and "bbox AP" in text
    assert (out / "metrics.json").is_file() and (out / "model_final.pth").is_file()
    # a rerun with the same config resumes the finished run instead of training again
    assert main(["demo", "--data", str(tiny_synth), "--output", str(out), *flat]) == 0
    assert "(resuming)" in capsys.readouterr().out

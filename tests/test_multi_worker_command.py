"""`kerastl train` on two workers (MultiWorkerMirroredStrategy on loopback), end to end."""

import time

import numpy as np
import pytest
from processes import finish, workers


@pytest.mark.slow
def test_kerastl_train_on_two_workers_writes_one_run_directory_with_its_report(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (48, 32, 32, 3)).astype("float32")
    y = np.arange(48) % 2
    x[y == 1, :16] = 255.0
    np.savez(tmp_path / "tiny.npz", x=x, y=y)
    (tmp_path / "mw.yaml").write_text(
        f"""
name: mw
output_dir: {tmp_path / "runs"}
model: {{backbone: efficientnet-lite0, weights: none, image_size: 32}}
data: {{source: "arrays:{tmp_path / "tiny.npz"}", batch_size: 8}}
train: {{strategy: multi_worker}}
stages:
  - {{epochs: 1, train: head, lr: 1.0e-2}}
  - {{epochs: 1, train: block7, lr: 1.0e-3}}
"""
    )
    start = time.monotonic()
    with workers("kerastl_command.py", "train", str(tmp_path / "mw.yaml"), "--quiet") as processes:
        outputs = finish(processes, deadline=start + 400)
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["mw"]
    run = tmp_path / "runs" / "mw"
    report = (run / "report.md").read_text()
    assert "Confusion matrix" in report and "| 2:block7 | 1 |" in report
    matrix = [
        line for line in report.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")
    ]
    assert matrix, report
    assert (run / "model.keras").is_file() and (run / "saved_model" / "saved_model.pb").is_file()
    assert "Run directory" in outputs[0] and "Run directory" not in outputs[1]

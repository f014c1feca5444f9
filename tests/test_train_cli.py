"""``dxgraph train``: bad requests are user errors; a short real run writes locked, loadable weights."""

import json
import subprocess
import sys

import pytest

from dxgraph.tools import read_lock, verify_weights

from _helpers import SHARED_DATA


def train(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "dxgraph", "train", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_unknown_task_and_missing_data_exit_2(tmp_path):
    res = train("teeth", cwd=tmp_path)
    assert res.returncode == 2 and "unknown training task 'teeth'" in res.stderr
    res = train("nodules", "--data", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert res.returncode == 2 and "training data not found" in res.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "ct_lidc_nodules").exists(), reason="LIDC nodule crops not present")
def test_a_short_nodule_training_writes_weights_recorded_in_a_lock_beside_them(tmp_path):
    out = tmp_path / "models" / "nodules.pt"
    res = train(
        "nodules",
        "--data",
        str(SHARED_DATA / "ct_lidc_nodules"),
        "--folds",
        "2",
        "--epochs",
        "1",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lock_path = out.parent / "weights.lock.json"
    entry = verify_weights(out, lock_path)
    assert entry.source == "trained by dxgraph" and "CC BY 3.0" in entry.licence
    assert 0.5 <= entry.metrics["cv_auroc"] <= 1.0
    assert list(read_lock(lock_path).entries) == ["nodules.pt"]
    assert "cv_auroc" in json.loads(res.stdout)  # progress went to stderr
    assert "fold" in res.stderr

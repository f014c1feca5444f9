"""A classical run pays only for what it uses: no torch, transformers or sentence embeddings.

Speed itself is measured side by side in ``bench/startup.py``; here the imports are checked, since they
are what made a cold ``dxgraph diagnose -t glaucoma`` take 8 s.
"""

import os
import subprocess
import sys

from _helpers import REPO, write_rgb

PROBE = """
import sys
import dxgraph
r = dxgraph.diagnose("glaucoma", sys.argv[1], db=sys.argv[2])
assert not r.plan.revisions, r.plan.revisions  # a second opinion would rightly load the learned segmenter
print(r.diagnosis.label)
print(",".join(sorted(m for m in ("torch", "transformers", "sentence_transformers", "monai") if m in sys.modules)))
"""


def test_a_classical_glaucoma_run_imports_no_network_library(tmp_path):
    from dxgraph.phantoms import fundus_phantom

    # a clear disc far from every threshold: the classical segmenter measures it and no review round runs
    image = write_rgb(tmp_path / "fundus.png", fundus_phantom(0.3, seed=1).rgb)
    env = {k: v for k, v in os.environ.items() if k != "DXGRAPH_NO_EMBEDDINGS"}  # the model may be there
    res = subprocess.run(
        [sys.executable, "-c", PROBE, str(image), str(tmp_path / "t.db")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO.parent,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    label, heavy = res.stdout.splitlines()
    assert label and heavy == ""


def test_the_cpu_is_chosen_without_importing_torch_where_no_gpu_driver_is():
    code = (
        "import sys; from dxgraph.tools import pick_device; from dxgraph.tools._torch_runtime import "
        "gpu_driver_present; d = pick_device('auto'); print(d, gpu_driver_present(), 'torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    device, driver, torch_imported = res.stdout.split()
    if driver == "False":  # this machine has no GPU driver: auto is the CPU, and torch was never imported
        assert (device, torch_imported) == ("cpu", "False")
    else:
        assert device in ("cpu", "cuda")

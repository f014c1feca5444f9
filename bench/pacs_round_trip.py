"""Benchmark: the PACS round trip for the CT nodule phantom series, against diagnosing the same files from
disk, side by side in one run.

For each repeat, the same phantom series (a new study each time) is:
1. diagnosed from the files on disk (``dxgraph.diagnose``), the baseline;
2. uploaded to the PACS (not timed), then pulled (QIDO + WADO-RS), diagnosed and pushed back as SR + SEG
   (STOW-RS), each stage timed;
3. with ``--dimse-url`` (the test Orthanc's DICOM port: ``dicom://DXGRAPHTEST@127.0.0.1:58043``), uploaded
   again and the same over DIMSE: C-FIND + C-GET, diagnose, C-STORE.

The two are interleaved so that the machine's load falls on both alike; the script prints each stage's
median and the round trip's ratio to the disk baseline. Needs a PACS with DICOMweb:

    export DXGRAPH_TEST_ORTHANC_URL="$(bash .ci/orthanc.sh)"      # a local Orthanc with its test credentials
    python bench/pacs_round_trip.py [--repeats 5] [--url URL] [--dimse-url dicom://AET@host:port]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

ORTHANC_TEST_CREDENTIALS = {"DXGRAPH_PACS_USERNAME": "dxgraph", "DXGRAPH_PACS_PASSWORD": "dxgraph-test-only"}
"""What ``.ci/orthanc.sh`` registers; used when the environment gives no credentials."""


def upload(rest: str, files: list[Path], auth: tuple[str, str]) -> str:
    """Upload the files as one new study through Orthanc's REST API; its StudyInstanceUID."""
    import pydicom
    import requests
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName = "BENCH", "Bench^Phantom"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        r = requests.post(f"{rest}/instances", data=buf.getvalue(), auth=auth, timeout=60)
        r.raise_for_status()
    return study


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--url", default=os.environ.get("DXGRAPH_TEST_ORTHANC_URL") or os.environ.get("DXGRAPH_PACS_URL")
    )
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenCV threads (as cohort workers run)")
    parser.add_argument("--dimse-url", default=None, help="also time the round trip over DIMSE (dicom://...)")
    args = parser.parse_args()
    if not args.url:
        raise SystemExit('give --url, or export DXGRAPH_TEST_ORTHANC_URL="$(bash .ci/orthanc.sh)"')
    for key, value in ORTHANC_TEST_CREDENTIALS.items():
        os.environ.setdefault(key, value)

    from dxgraph import diagnose
    from dxgraph.agent.cohort import limit_cpu_threads
    from dxgraph.pacs import PacsClient, PacsConfig, pull, push
    from dxgraph.phantoms import write_nodule_case
    from dxgraph.traces import TraceStore

    limit_cpu_threads(args.threads)
    config = PacsConfig.load(args.url)
    rest = config.base_url.removesuffix("/dicom-web")
    auth = (os.environ["DXGRAPH_PACS_USERNAME"], os.environ["DXGRAPH_PACS_PASSWORD"])
    stages = ("disk", "pull", "push", "round_trip", "dimse_pull", "dimse_push", "dimse_round_trip")
    times: dict[str, list[float]] = {k: [] for k in stages}
    dimse = PacsConfig.load(args.dimse_url).connect() if args.dimse_url else None
    with tempfile.TemporaryDirectory(prefix="dxgraph-bench-pacs-") as tmp:
        folder = Path(tmp)
        case = write_nodule_case(folder / "case", 5, diameter_mm=9.0, nodule_type="solid", dicom=True)
        files = sorted(case.images[0].path.iterdir())
        db = str(folder / "traces.db")
        store = TraceStore(db)
        diagnose("pulmonary_nodule", case.images[0].path, db=str(folder / "warm.db"))  # warm both paths alike
        with PacsClient(config) as client:
            for i in range(args.repeats + 1):
                t0 = time.perf_counter()
                local = diagnose("pulmonary_nodule", case.images[0].path, db=str(folder / "disk.db"))
                disk_s = time.perf_counter() - t0
                study = upload(rest, files, auth)
                t0 = time.perf_counter()
                pulled = pull(client, study, None, "pulmonary_nodule", db=db)
                t1 = time.perf_counter()
                pushed = push(client, store, pulled.run.run_id)
                t2 = time.perf_counter()
                same = {e.indicator: e.value for e in pulled.run.evidence} == {
                    e.indicator: e.value for e in local.evidence
                }
                if not same or pushed.already:
                    raise SystemExit(
                        f"repeat {i}: the pulled run differs from the disk run, or nothing was pushed"
                    )
                if dimse is not None:
                    study = upload(rest, files, auth)
                    t3 = time.perf_counter()
                    over_dimse = pull(dimse, study, None, "pulmonary_nodule", db=db)
                    t4 = time.perf_counter()
                    pushed = push(dimse, store, over_dimse.run.run_id)
                    t5 = time.perf_counter()
                    if [(e.indicator, e.value) for e in over_dimse.run.evidence] != [
                        (e.indicator, e.value) for e in pulled.run.evidence
                    ] or pushed.already:
                        raise SystemExit(f"repeat {i}: the DIMSE run differs, or nothing was pushed")
                    if i > 0:
                        times["dimse_pull"].append(t4 - t3)
                        times["dimse_push"].append(t5 - t4)
                        times["dimse_round_trip"].append(t5 - t3)
                if i == 0:
                    continue  # the first round trip warms the HTTP session and highdicom
                times["disk"].append(disk_s)
                times["pull"].append(t1 - t0)
                times["push"].append(t2 - t1)
                times["round_trip"].append(t2 - t0)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    print(
        f"CT nodule phantom series ({len(files)} slices), {args.repeats} repeats, medians, {args.threads} thread(s):"
    )
    print(f"  diagnose from disk                 {med['disk']:.2f} s")
    print(
        f"  pull (QIDO + WADO-RS) + diagnose   {med['pull']:.2f} s   ({med['pull'] / med['disk']:.2f}x disk)"
    )
    print(f"  push (SR + SEG, dciodvfy, STOW-RS) {med['push']:.2f} s")
    print(
        f"  round trip                         {med['round_trip']:.2f} s   ({med['round_trip'] / med['disk']:.2f}x disk)"
    )
    if "dimse_pull" in med:
        print(
            f"  pull (C-FIND + C-GET) + diagnose   {med['dimse_pull']:.2f} s   ({med['dimse_pull'] / med['disk']:.2f}x disk)"
        )
        print(f"  push (SR + SEG, dciodvfy, C-STORE) {med['dimse_push']:.2f} s")
        print(
            f"  round trip over DIMSE              {med['dimse_round_trip']:.2f} s   ({med['dimse_round_trip'] / med['disk']:.2f}x disk)"
        )
    print("  evidence of every pulled run equal to the disk run's: yes")


if __name__ == "__main__":
    main()

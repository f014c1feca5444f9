"""Training dxgraph's own small models on real, labelled data, seeded, on CPU in minutes.

Each task module (``fundus``, ``cxr``, ``nodules``, ``nodule_segmentation``, ``lv``) exposes
``train(data_dir, ...)`` used by ``dxgraph train``: k-fold cross-validation inside the data set, then a
final model on all of it, written as a self-describing weights file and recorded in the weights lock file.
The data come from ``--data`` or ``$DXGRAPH_SHARED_DATA/<data set>``, never from a path guessed from the
installation. ``_common`` holds what the task modules share.
"""

from dxgraph.tools.training._common import SHARED_DATA_ENV, training_data_dir

TRAINING_SETS: dict[str, str] = {
    "fundus": "fundus_drishti",
    "cxr": "cxr_wingspan",
    "nodules": "ct_lidc_nodules",
    "nodule_segmentation": "ct_lidc_nodules",
    "lv": "cine_sunnybrook_slices",
}
"""Training task (a module of this package) -> the data set folder it trains on."""

__all__ = ["SHARED_DATA_ENV", "TRAINING_SETS", "training_data_dir"]

"""Training dxgraph's own small models on real, labelled data, seeded, on CPU in minutes.

Each task module (``fundus``, ``cxr``, ``nodules``) exposes ``train(...)`` used by ``dxgraph train``:
k-fold cross-validation inside the data set, then a final model on all of it, written as a
self-describing weights file and recorded in the weights lock file.
"""

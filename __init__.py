"""dxgraph: evidence-based, traced diagnosis of medical images by an agentic tool graph.

A researcher's entry point::

    import dxgraph
    result = dxgraph.diagnose("glaucoma", "fundus.png")
    print(result.diagnosis.label, result.run_id)

Heavy modules load on first use, so ``import dxgraph`` and the CLI's listings stay fast.
"""

import lazy_loader

# The public names are declared in __init__.pyi and imported from their packages on first use, as every
# heavy package face is: ``import dxgraph`` and the CLI's listings stay fast.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)

"""The agent: one run assembled and executed, and everything that acts during it.

``diagnose`` puts a run together from ``RunOptions`` (``assemble_run``: the one assembly that cohorts and
replay share), loads the case, runs the LangGraph graph (retrieve → plan → dispatch → aggregate →
decide) and stores the trace. Here too: dispatching a plan's tool calls, the aggregators (``rules``, and a
language model held to them), the language-model backends (OpenAI-compatible servers, local
transformers checkpoints), the LLM planner's call, replaying a stored run, and the demo. Cohorts are the
subpackage ``dxgraph.agent.cohort``.

A new language-model backend implements ``ChatBackend`` (``complete(ChatRequest) -> ChatReply``) and is
passed to ``diagnose(..., language_model=backend)``.
"""

import lazy_loader

# The face is declared in __init__.pyi; each name is imported from its module on first use, so that
# importing dxgraph.agent (the CLI does, for RunOptions) does not import LangGraph, the trace store,
# the demo's phantoms or the model backends.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)

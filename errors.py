"""Errors that dxgraph raises on purpose.

The hierarchy::

    DxgraphError                 base of everything raised on purpose
    ├── UserError                bad input or configuration: one clear line, CLI exit code 2
    │   ├── CaseError            an image or case that cannot be read or does not fit the request
    │   ├── CriteriaError        a criteria document that is malformed, or a question no criteria answer
    │   ├── PlanError            a plan that does not validate against the tool registry
    │   ├── StoreError           a trace store that cannot be opened, or a run that does not exist
    │   └── RegistrationError    a tool with a bad signature or a name already taken
    └── ToolError                a tool could not produce evidence: recorded in the trace, the run goes on

Anything else that escapes is a bug and must surface with its traceback.
"""

from __future__ import annotations


class DxgraphError(Exception):
    """Base class of every error dxgraph raises on purpose."""


class UserError(DxgraphError):
    """Bad input or configuration; the CLI prints the message and exits with code 2."""

    exit_code = 2


class CaseError(UserError):
    """An image or case that cannot be read, or that does not fit what was asked."""


class CriteriaError(UserError):
    """A malformed criteria document, or a question that no criteria document answers."""


class PlanError(UserError):
    """A plan that does not validate against the tool registry or the case."""


class StoreError(UserError):
    """A trace store that cannot be opened, or a run id that does not exist in it."""


class ToolError(DxgraphError):
    """A tool could not produce evidence; the run records the reason and goes on."""

    def __init__(self, message: str, *, flags: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.flags = flags
        """Machine-readable reasons, for example ``("disc_not_found",)``."""


class RegistrationError(UserError):
    """A tool that cannot be registered: bad signature, missing metadata, or a name already taken."""

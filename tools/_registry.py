"""The tool registry: typed functions registered with ``@tool``, looked up by name."""

from __future__ import annotations

import functools
import inspect
import os
import re
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from dxgraph.core import ImageRef
from dxgraph.errors import RegistrationError, ToolError, UserError

Device = Literal["cpu", "gpu", "any"]
Method = Literal["classical", "learned", "geometry", "rule", "view", "unspecified"]
"""A tool's method family: ``classical`` image analysis, ``learned`` weights, ``geometry`` computed from
other tools' outputs, a clinical ``rule``, an image ``view``, or ``unspecified`` (a plugin that says nothing).
Two measurements are independent when the tools that made them differ in a classical or learned step."""
METHODS: tuple[str, ...] = typing.get_args(Method)
OUT_OF_DOMAIN_FLAG = "out_of_domain"
"""Quality flag a tool with an input-domain check raises when its input is unlike its training data."""
DIMS = ("2d", "3d", "3d+t")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


@dataclass(frozen=True)
class ErrorModel:
    """A tool's measured error on one quantity: value measured minus reference, over a real data set."""

    bias: float
    """Mean error (measured - reference), in the quantity's unit."""
    sd: float
    """Standard deviation of the error, in the quantity's unit."""
    n: int
    """How many cases it was measured on."""
    source: str
    """Where it was measured: the data set, and how (cross-validation folds, held out...)."""

    @property
    def rmse(self) -> float:
        """Root mean square error, in the quantity's unit: bias and spread together."""
        return float((self.bias**2 + self.sd**2) ** 0.5)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"bias": self.bias, "sd": self.sd, "n": self.n, "source": self.source}


PLAUSIBLE_SPACING_MM = (0.01, 50.0)
"""Pixel or voxel sizes a medical imaging device produces; tools that measure in mm refuse others (a header
claiming 1e-6 mm voxels makes filters sized in mm span millions of voxels)."""


@dataclass(frozen=True)
class ToolSpec:
    """Everything the planner and dispatcher know about one registered tool."""

    name: str
    """Unique tool name."""
    version: str
    """Semantic version of the tool's behaviour."""
    description: str
    """The function's docstring: what an LLM planner reads."""
    fn: Callable[[Any], BaseModel] = field(repr=False)
    """The function itself."""
    input_model: type[BaseModel]
    """Pydantic model of the single input."""
    output_model: type[BaseModel]
    """Pydantic model of the output."""
    modalities: tuple[str, ...]
    """Image modalities the tool accepts."""
    dims: tuple[str, ...]
    """Dimensionalities it accepts: ``2d``, ``3d``, ``3d+t``."""
    device: Device = "cpu"
    """Where it runs: ``cpu``, ``gpu`` (CUDA when present) or ``any``."""
    batchable: bool = False
    """Whether it accepts several cases' inputs in one call (then ``batch_fn`` is set)."""
    requires_spacing: bool = False
    """Whether its image inputs must carry physical spacing (it measures in mm)."""
    spacing_range_mm: tuple[float, float] = PLAUSIBLE_SPACING_MM
    """Pixel/voxel sizes a ``requires_spacing`` tool accepts; others fail with ``implausible_spacing``."""
    batch_fn: Callable[[list[Any]], list[BaseModel]] | None = field(default=None, repr=False)
    """For batchable tools: ``batch_fn(inputs) -> outputs``, one forward pass for several inputs."""
    timeout_s: float | None = None
    """Longest a call may take before it fails with ``tool_timeout``; None: ``default_timeout_s()``."""
    method: Method = "unspecified"
    """Method family (see ``Method``): what makes two measurements of a quantity independent."""
    error_models: dict[str, ErrorModel] = field(default_factory=dict)
    """Quantity (an output field of this tool or of a tool measuring from its output, such as ``vcdr``
    for a disc segmenter) -> the measured error of the values it leads to."""
    domain_check: str | None = None
    """For learned tools: how the tool tells an input unlike its training data (it then raises the
    quality flag ``out_of_domain``); None when it has no such check."""

    @property
    def origin(self) -> str:
        """The module that defines the tool."""
        return f"{getattr(self.fn, '__module__', '?')}.{getattr(self.fn, '__qualname__', '?')}"

    def call_batch(self, inputs: list[BaseModel]) -> list[BaseModel]:
        """Run several inputs: one batched call when the tool is batchable, else one call each."""
        if self.batch_fn is None:
            return [self.fn(i) for i in inputs]
        outs = self.batch_fn(inputs)
        if len(outs) != len(inputs):
            raise TypeError(f"tool {self.name}: batch of {len(inputs)} inputs gave {len(outs)} outputs")
        return outs

    def input_fields(self) -> dict[str, Any]:
        """Input field name -> annotation."""
        return {n: f.annotation for n, f in self.input_model.model_fields.items()}

    def output_fields(self) -> dict[str, Any]:
        """Output field name -> annotation."""
        return {n: f.annotation for n, f in self.output_model.model_fields.items()}

    def summary(self) -> dict[str, Any]:
        """Name, version, first docstring line and declarations, for listings."""
        return {
            "name": self.name,
            "version": self.version,
            "summary": self.description.strip().splitlines()[0] if self.description.strip() else "",
            "modalities": list(self.modalities),
            "dims": list(self.dims),
            "device": self.device,
            "batchable": self.batchable,
            "requires_spacing": self.requires_spacing,
            "method": self.method,
            "error_models": {q: m.as_dict() for q, m in self.error_models.items()},
            "domain_check": self.domain_check,
            "module": getattr(self.fn, "__module__", "?"),
        }

    def error_model(self, quantity: str) -> ErrorModel | None:
        """The measured error of ``quantity`` values this tool leads to, when declared."""
        return self.error_models.get(quantity)

    def describe(self) -> dict[str, Any]:
        """Summary plus full docstring and input/output JSON schemas."""
        return {
            **self.summary(),
            "description": inspect.cleandoc(self.description),
            "input_schema": self.input_model.model_json_schema(),
            "output_schema": self.output_model.model_json_schema(),
        }


class ToolRegistry:
    """A set of tools by unique name."""

    def __init__(self) -> None:
        self._tools: dict[str, ToolSpec] = {}

    def register(self, tool: ToolSpec | Callable[..., Any]) -> ToolSpec:
        """Add a tool (its ``ToolSpec``, or a function decorated with ``@tool``); RegistrationError when
        its name is taken by another tool."""
        spec = tool if isinstance(tool, ToolSpec) else spec_of(tool)
        if spec.name in self._tools and self._tools[spec.name].fn is not spec.fn:
            raise RegistrationError(
                f"tool name {spec.name!r} is already registered by {self._tools[spec.name].origin}"
                f"; {spec.origin} must use another name"
            )
        self._tools[spec.name] = spec
        return spec

    def get(self, name: str) -> ToolSpec:
        """The tool with this name; KeyError when there is none."""
        return self._tools[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(sorted(self._tools.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._tools)

    def producers_of(self, field_name: str, annotation: Any = None) -> list[ToolSpec]:
        """Tools whose output has this field (with this annotation, when given)."""
        out = []
        for spec in self:
            fields = spec.output_fields()
            if field_name in fields and (annotation is None or fields[field_name] == annotation):
                out.append(spec)
        return out


default_registry = ToolRegistry()
"""The process-wide registry; ``load_plugins`` fills it with the built-in tools and the installed plugins."""


def spec_of(fn: Callable[..., Any]) -> ToolSpec:
    """The ToolSpec a function decorated with ``@tool`` carries; RegistrationError for any other function."""
    spec = getattr(fn, "__dxgraph_tool__", None)
    if not isinstance(spec, ToolSpec):
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        raise RegistrationError(f"{name} is not a tool: decorate it with @tool(...)")
    return spec


DEFAULT_TOOL_TIMEOUT_S = 300.0
"""How long a tool call may take unless its tool or $DXGRAPH_TOOL_TIMEOUT_S says otherwise."""
TIMEOUT_ENV = "DXGRAPH_TOOL_TIMEOUT_S"
"""Environment variable overriding the default tool timeout, in seconds."""


def default_timeout_s() -> float:
    """The tool timeout for tools that set none: $DXGRAPH_TOOL_TIMEOUT_S, else DEFAULT_TOOL_TIMEOUT_S."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TOOL_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"${TIMEOUT_ENV} must be a number of seconds, not {raw!r}") from None
    if not value > 0:
        raise UserError(f"${TIMEOUT_ENV} must be positive, not {raw!r}")
    return value


def make_spec(
    fn: Callable[[Any], BaseModel],
    *,
    name: str,
    version: str,
    modalities: tuple[str, ...] | list[str],
    dims: tuple[str, ...] | list[str],
    device: Device = "cpu",
    batchable: bool = False,
    requires_spacing: bool = False,
    batch_fn: Callable[[list[Any]], list[BaseModel]] | None = None,
    timeout_s: float | None = None,
    spacing_range_mm: tuple[float, float] = PLAUSIBLE_SPACING_MM,
    method: Method = "unspecified",
    error_models: dict[str, ErrorModel] | None = None,
    domain_check: str | None = None,
) -> ToolSpec:
    """Check a function's signature and declarations and build its ToolSpec."""
    where = f"tool {name!r} ({getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')})"
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistrationError(f"{where}: name must be snake_case letters, digits and underscores")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise RegistrationError(f"{where}: version must look like 1.2.3, got {version!r}")
    if not (fn.__doc__ or "").strip():
        raise RegistrationError(f"{where}: needs a docstring; it is the description planners read")
    if not modalities:
        raise RegistrationError(f"{where}: declare at least one modality")
    bad_dims = set(dims) - set(DIMS)
    if not dims or bad_dims:
        raise RegistrationError(f"{where}: dims must be a non-empty subset of {DIMS}")
    if device not in ("cpu", "gpu", "any"):
        raise RegistrationError(f"{where}: device must be cpu, gpu or any")
    if timeout_s is not None and not timeout_s > 0:
        raise RegistrationError(f"{where}: timeout_s must be a positive number of seconds")
    if len(spacing_range_mm) != 2 or not 0 < spacing_range_mm[0] < spacing_range_mm[1]:
        raise RegistrationError(f"{where}: spacing_range_mm must be (low, high) mm with 0 < low < high")
    if method not in METHODS:
        raise RegistrationError(f"{where}: method must be one of {', '.join(METHODS)}, not {method!r}")
    for quantity, model in (error_models or {}).items():
        if not isinstance(model, ErrorModel) or not (model.sd >= 0 and model.n > 0):
            raise RegistrationError(
                f"{where}: error_models[{quantity!r}] must be an ErrorModel with sd >= 0 and n > 0"
            )
    if batchable and batch_fn is None:
        raise RegistrationError(f"{where}: batchable tools must give batch_fn, taking a list of inputs")
    if batch_fn is not None and not batchable:
        raise RegistrationError(f"{where}: batch_fn given but batchable is False")
    params = list(inspect.signature(fn).parameters.values())
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # noqa: BLE001 -- any failure to resolve is the plugin's to fix
        raise RegistrationError(f"{where}: annotations do not resolve ({e})") from None
    if len(params) != 1 or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise RegistrationError(f"{where}: must take exactly one positional parameter, a pydantic model")
    in_t, out_t = hints.get(params[0].name), hints.get("return")
    if not (isinstance(in_t, type) and issubclass(in_t, BaseModel)):
        raise RegistrationError(f"{where}: its parameter must be annotated with a pydantic model")
    if not (isinstance(out_t, type) and issubclass(out_t, BaseModel)):
        raise RegistrationError(f"{where}: its return must be annotated with a pydantic model")
    guard = _image_guard(
        name,
        tuple(modalities),
        tuple(dims),
        requires_spacing,
        (float(spacing_range_mm[0]), float(spacing_range_mm[1])),
    )

    @functools.wraps(fn)
    def guarded(inp: Any) -> BaseModel:
        guard(inp)
        return fn(inp)

    guarded_batch = None
    if batch_fn is not None:
        inner = batch_fn

        def guarded_batch(inputs: list[Any]) -> list[BaseModel]:
            for inp in inputs:
                guard(inp)
            return inner(inputs)

    return ToolSpec(
        name=name,
        version=version,
        description=inspect.cleandoc(fn.__doc__ or ""),
        fn=guarded,
        input_model=in_t,
        output_model=out_t,
        modalities=tuple(modalities),
        dims=tuple(dims),
        device=device,
        batchable=batchable,
        requires_spacing=requires_spacing,
        spacing_range_mm=(float(spacing_range_mm[0]), float(spacing_range_mm[1])),
        batch_fn=guarded_batch,
        timeout_s=timeout_s,
        method=method,
        error_models=dict(error_models or {}),
        domain_check=domain_check,
    )


def _image_guard(
    name: str,
    modalities: tuple[str, ...],
    dims: tuple[str, ...],
    requires_spacing: bool,
    spacing_range_mm: tuple[float, float],
) -> Callable[[Any], None]:
    """A check run before every call: each image input fits the tool's declarations, or ToolError."""

    def check(inp: Any) -> None:
        for field_name, value in inp:
            if not isinstance(value, ImageRef):
                continue
            where = f"{name}: input {field_name} (image {value.image_id})"
            if value.modality is not None and value.modality not in modalities:
                raise ToolError(
                    f"{where} is {value.modality}; the tool takes {', '.join(modalities)}",
                    flags=("wrong_modality",),
                )
            if value.dims not in dims:
                raise ToolError(
                    f"{where} is {value.dims}; the tool takes {'/'.join(dims)} images", flags=("wrong_dims",)
                )
            if requires_spacing and value.spacing_mm is None:
                raise ToolError(
                    f"{where} has no pixel spacing; the tool measures in mm", flags=("no_spacing",)
                )
            lo, hi = spacing_range_mm
            if requires_spacing and not all(lo <= s <= hi for s in value.spacing_mm or ()):
                shown = " x ".join(f"{s:g}" for s in value.spacing_mm or ())
                raise ToolError(
                    f"{where} claims {shown} mm per pixel, outside the {lo:g}-{hi:g} mm the tool accepts"
                    " from imaging devices; its header's spacing is wrong",
                    flags=("implausible_spacing",),
                )

    return check


def tool(
    *,
    name: str,
    version: str,
    modalities: tuple[str, ...] | list[str],
    dims: tuple[str, ...] | list[str] = ("2d",),
    device: Device = "cpu",
    batchable: bool = False,
    requires_spacing: bool = False,
    batch_fn: Callable[[list[Any]], list[Any]] | None = None,
    registry: ToolRegistry | None = None,
    timeout_s: float | None = None,
    spacing_range_mm: tuple[float, float] = PLAUSIBLE_SPACING_MM,
    method: Method = "unspecified",
    error_models: dict[str, ErrorModel] | None = None,
    domain_check: str | None = None,
) -> Callable[[Callable[[In], Out]], Callable[[In], Out]]:
    """Declare a function ``fn(Input) -> Output`` a tool; it is returned wrapped in its guard.

    Decorating registers nothing (importing a module has no side effects): the function carries its
    ``ToolSpec``, and ``load_plugins`` registers the tools of the built-in modules and of the installed
    plugins. Pass ``registry=`` to register at once, or call ``registry.register(fn)`` later.

    The guard refuses, with ToolError, image inputs of a modality or dimensionality the tool does
    not declare, or without spacing (or with one outside ``spacing_range_mm``) when it
    ``requires_spacing``: direct calls are as safe as planned ones.

    ``batchable`` tools also give ``batch_fn(list[Input]) -> list[Output]``, which must return what
    calling ``fn`` on each input would. ``requires_spacing`` tools are never planned on images
    without physical spacing. A call that runs past ``timeout_s`` (default: ``default_timeout_s()``)
    fails its step with the flag ``tool_timeout``.

    ``method`` names the method family, ``error_models`` the measured error (bias and SD per quantity, on
    real data) of the values the tool leads to, and ``domain_check`` how a learned tool tells inputs unlike
    its training data (flag ``out_of_domain``): the review step uses them to combine, question and
    replace measurements.
    """

    def decorate(fn: Callable[[In], Out]) -> Callable[[In], Out]:
        spec = make_spec(
            fn,
            name=name,
            version=version,
            modalities=modalities,
            dims=dims,
            device=device,
            batchable=batchable,
            requires_spacing=requires_spacing,
            batch_fn=batch_fn,
            timeout_s=timeout_s,
            spacing_range_mm=spacing_range_mm,
            method=method,
            error_models=error_models,
            domain_check=domain_check,
        )
        spec.fn.__dxgraph_tool__ = spec  # type: ignore[attr-defined]
        if registry is not None:
            registry.register(spec)
        return spec.fn  # type: ignore[return-value]

    return decorate

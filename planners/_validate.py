"""Validating a plan against the tool registry and the case before anything runs."""

from __future__ import annotations

import types
import typing
from typing import Any, Union

from dxgraph.core import Case, ImageInput, ImageRef, Plan, StepOutput, image_selection
from dxgraph.errors import PlanError
from dxgraph.tools import ToolRegistry, ToolSpec


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def annotations_compatible(produced: Any, wanted: Any) -> bool:
    """Whether an output field's annotation can feed an input field's annotation."""
    produced, wanted_core = _strip_optional(produced), _strip_optional(wanted)
    if produced == wanted_core or produced == wanted:
        return True
    if isinstance(produced, type) and isinstance(wanted_core, type):
        return issubclass(produced, wanted_core)
    return False


def validate_plan(plan: Plan, registry: ToolRegistry, case: Case) -> None:
    """Raise PlanError naming the step and the reason when the plan cannot run on this case.

    Checks: known tools, unique step ids, bindings to known images and to *earlier* steps only
    (so no cycles), type-compatible step-to-step bindings, required inputs bound, and the image's
    modality and dimensionality accepted by the tool, and spacing present where the tool needs it.
    """
    images = {im.image_id: im for im in case.images}
    done: dict[str, Any] = {}
    for step in plan.steps:
        where = f"step {step.step_id} ({step.tool})"
        if step.step_id in done:
            raise PlanError(f"{where}: duplicate step id")
        if step.tool not in registry:
            raise PlanError(f"{where}: no tool named {step.tool!r} is registered")
        spec = registry.get(step.tool)
        fields = spec.input_model.model_fields
        for name, binding in step.inputs.items():
            if name not in fields:
                raise PlanError(f"{where}: the tool has no input {name!r}")
            wanted = fields[name].annotation
            if isinstance(binding, ImageInput):
                _check_image(where, spec, binding, images)
                _check_selection(where, name, fields[name], images[binding.image_id])
                if not annotations_compatible(ImageRef, wanted):
                    raise PlanError(f"{where}: input {name!r} is not an image input")
            elif isinstance(binding, StepOutput):
                if binding.step_id not in done:
                    raise PlanError(
                        f"{where}: input {name!r} reads step {binding.step_id}, which does not run before it"
                        " (unknown step or a cycle)"
                    )
                produced = done[binding.step_id].output_model.model_fields.get(binding.field)
                if produced is None:
                    raise PlanError(f"{where}: step {binding.step_id} has no output {binding.field!r}")
                if not annotations_compatible(produced.annotation, wanted):
                    raise PlanError(
                        f"{where}: input {name!r} wants {_type_name(wanted)} but step {binding.step_id}"
                        f".{binding.field} gives {_type_name(produced.annotation)}"
                    )
        missing = [n for n, f in fields.items() if f.is_required() and n not in step.inputs]
        if missing:
            raise PlanError(f"{where}: required inputs not bound: {', '.join(missing)}")
        done[step.step_id] = spec
    for ind in plan.indicators:
        if ind.step_id not in done:
            raise PlanError(f"indicator {ind.indicator}: step {ind.step_id} is not in the plan")
        if ind.quantity not in done[ind.step_id].output_model.model_fields:
            raise PlanError(f"indicator {ind.indicator}: step {ind.step_id} has no output {ind.quantity!r}")


def _check_image(where: str, spec: ToolSpec, binding: ImageInput, images: dict[str, Any]) -> None:
    tool, modalities, dims = spec.name, spec.modalities, spec.dims
    im = images.get(binding.image_id)
    if im is None:
        raise PlanError(f"{where}: the case has no image {binding.image_id!r}")
    modality = im.modality or binding.assumed_modality
    if modality is None:
        raise PlanError(f"{where}: image {im.image_id} has no modality and the plan assumes none")
    if im.modality is not None and binding.assumed_modality not in (None, im.modality):
        raise PlanError(f"{where}: image {im.image_id} is {im.modality}, not {binding.assumed_modality}")
    if modality not in modalities:
        raise PlanError(
            f"{where}: {tool} accepts {', '.join(modalities)} images; image {im.image_id} is {modality}"
        )
    if im.dims not in dims:
        raise PlanError(f"{where}: {tool} accepts {', '.join(dims)} images; image {im.image_id} is {im.dims}")
    if spec.requires_spacing and im.spacing_mm is None:
        raise PlanError(
            f"{where}: {tool} measures in physical units and needs pixel spacing; image {im.image_id}"
            " has none (give a DICOM or NIfTI file, or declare the spacing)"
        )
    if modality in im.implausible:
        raise PlanError(
            f"{where}: image {im.image_id} does not look like a {modality} image: {im.implausible[modality]}"
        )


def _check_selection(where: str, name: str, info: Any, image: Any) -> None:
    sequence, timepoint = image_selection(info)
    if image.timepoint != timepoint:
        raise PlanError(
            f"{where}: input {name!r} wants the {timepoint} study; image {image.image_id} is {image.timepoint}"
        )
    if sequence is not None and image.sequence != sequence:
        raise PlanError(
            f"{where}: input {name!r} wants a {sequence} image; image {image.image_id} is {image.sequence or 'unspecified'}"
        )


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)

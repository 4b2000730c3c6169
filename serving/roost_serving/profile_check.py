"""Check a reference profile against the model it is served with, at load time.

A profile built for another model (other inputs, other feature count, other output names)
would otherwise be accepted and leave every drift and prediction series empty, silently. Here
each difference is listed exactly, and the server refuses to start with all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from roost_serving.errors import RoostError
from roost_serving.profile import NumericFeature, Profile
from roost_serving.protocol import TensorSpec


class ProfileMismatchError(RoostError):
    """The profile does not describe the model being served."""


def _names(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(repr(spec.name) for spec in specs)


def profile_differences(
    profile: Profile, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> list[str]:
    """Every way ``profile`` disagrees with the model's signature (empty when it fits)."""
    by_name = {spec.name: spec for spec in inputs}
    problems: list[str] = []
    columns: dict[str, set[int]] = {}
    for feature in profile.features:
        spec = by_name.get(feature.input)
        if spec is None:
            problems.append(
                f"feature {feature.name!r} reads input {feature.input!r}, which the model does "
                f"not have (inputs: {_names(inputs)})"
            )
            continue
        if isinstance(feature, NumericFeature) and spec.datatype == "BYTES":
            problems.append(f"numeric feature {feature.name!r} reads BYTES input {spec.name!r}")
        width = spec.shape[1] if len(spec.shape) == 2 else None
        if feature.column is None:
            if len(spec.shape) == 2 and width not in (1, -1):
                problems.append(
                    f"feature {feature.name!r} has no column but input {spec.name!r} has "
                    f"{width} columns"
                )
            continue
        if len(spec.shape) != 2:
            problems.append(
                f"feature {feature.name!r} reads column {feature.column} of input "
                f"{spec.name!r}, which has shape {list(spec.shape)} (no columns)"
            )
        elif width is not None and width >= 0 and feature.column >= width:
            problems.append(
                f"feature {feature.name!r} reads column {feature.column} of input "
                f"{spec.name!r}, which has {width} columns"
            )
        columns.setdefault(spec.name, set()).add(feature.column)
    for name, seen in columns.items():
        width = by_name[name].shape[1]
        missing = sorted(set(range(width)) - seen) if width > 0 else []
        if missing:
            problems.append(
                f"input {name!r} has {width} columns but the profile describes {len(seen)} "
                f"(missing columns {', '.join(map(str, missing))})"
            )
    described = {feature.input for feature in profile.features}
    for spec in inputs:
        if spec.name not in described:
            problems.append(f"model input {spec.name!r} has no feature in the profile")
    prediction = profile.prediction
    if prediction is not None and prediction.output not in {spec.name for spec in outputs}:
        problems.append(
            f"prediction output {prediction.output!r} is not an output of the model "
            f"(outputs: {_names(outputs)})"
        )
    return problems


def check_profile(
    profile: Profile, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], where: str
) -> None:
    """Raise :class:`ProfileMismatchError` listing every difference; ``where`` names the file."""
    problems = profile_differences(profile, inputs, outputs)
    if problems:
        raise ProfileMismatchError(
            f"profile {where} does not match the model: " + "; ".join(problems)
        )

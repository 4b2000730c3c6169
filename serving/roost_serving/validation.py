"""Offline validation of a candidate model against the stable one (pure: numpy only).

Two checks, each usable on its own (by `roost validate`, and by in-cluster validation later):

- `compare_signatures(candidate, stable)`: the candidate must accept what clients send the
  stable model today and answer in the same shape — same input names, datatypes and shapes,
  every stable output present with the same datatype. Each difference is one message such as
  ``input X has 12 features, stable has 13``. An intended interface change is declared with
  ``allow_interface_change=True``: the differences are then reported as notes, not failures.
- `compare_outputs(candidate, stable, expected, thresholds)`: both models' answers on the same
  golden rows. The label agreement (share of rows where both predict the same label), the
  largest absolute difference of the float outputs (e.g. class probabilities) and, when
  expected labels are given, each model's accuracy — judged against `GoldenThresholds`.

Inputs are the protocol's `TensorSpec`s and plain `{output name: array}` mappings, so nothing
here runs a model; `roost_serving.validate` loads the models and runs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from roost_serving.protocol import TensorSpec

LABEL_TYPES = ("INT64", "INT32", "INT16", "INT8", "UINT8", "BYTES", "BOOL")


@dataclass(frozen=True)
class SignatureReport:
    """The differences between two models' interfaces."""

    problems: tuple[str, ...]
    """Differences that break clients of the stable model (empty: compatible)."""
    notes: tuple[str, ...] = ()
    """Differences accepted because an interface change was declared."""

    @property
    def ok(self) -> bool:
        """Whether the candidate can replace the stable model without breaking clients."""
        return not self.problems


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def _tensor_problems(role: str, cand: TensorSpec, stable: TensorSpec) -> list[str]:
    out = []
    if cand.datatype != stable.datatype:
        out.append(f"{role} {cand.name} is {cand.datatype}, stable has {stable.datatype}")
    if len(cand.shape) != len(stable.shape):
        out.append(
            f"{role} {cand.name} has shape {_shape(cand.shape)}, stable has {_shape(stable.shape)}"
        )
        return out
    for axis, (c, s) in enumerate(zip(cand.shape, stable.shape, strict=True)):
        if c == s or (c < 0 and axis == 0):
            continue  # a dynamic batch dimension accepts whatever the stable one did
        if len(cand.shape) == 2 and axis == 1 and role == "input":
            out.append(f"{role} {cand.name} has {_dim(c)} features, stable has {_dim(s)}")
        else:
            out.append(
                f"{role} {cand.name} has shape {_shape(cand.shape)}, "
                f"stable has {_shape(stable.shape)}"
            )
            break
    return out


def _dim(d: int) -> str:
    return "a dynamic number of" if d < 0 else str(d)


def compare_signatures(
    candidate_inputs: Sequence[TensorSpec],
    candidate_outputs: Sequence[TensorSpec],
    stable_inputs: Sequence[TensorSpec],
    stable_outputs: Sequence[TensorSpec],
    *,
    allow_interface_change: bool = False,
) -> SignatureReport:
    """Whether the candidate takes the stable model's inputs and gives its outputs."""
    found: list[str] = []
    cand_in = {t.name: t for t in candidate_inputs}
    stable_in = {t.name: t for t in stable_inputs}
    for name, s in stable_in.items():
        if name not in cand_in:
            found.append(f"input {name} of the stable model is missing from the candidate")
        else:
            found += _tensor_problems("input", cand_in[name], s)
    for name in cand_in.keys() - stable_in.keys():
        found.append(f"input {name} is new: clients of the stable model do not send it")
    cand_out = {t.name: t for t in candidate_outputs}
    for s in stable_outputs:
        if s.name not in cand_out:
            found.append(f"output {s.name} of the stable model is missing from the candidate")
        elif cand_out[s.name].datatype != s.datatype:
            found.append(f"output {s.name} is {cand_out[s.name].datatype}, stable has {s.datatype}")
    if allow_interface_change:
        return SignatureReport(problems=(), notes=tuple(found))
    return SignatureReport(problems=tuple(found))


@dataclass(frozen=True)
class GoldenThresholds:
    """How close the candidate's answers must be to pass."""

    min_agreement: float = 0.95
    """Share of rows on which both models predict the same label."""
    max_abs_error: float | None = None
    """Largest tolerated absolute difference of any float output (None: not checked)."""
    min_accuracy: float | None = None
    """Candidate accuracy on the expected labels (None: only if expected labels are given,
    and then the candidate must not be less accurate than the stable model minus 0.05)."""
    accuracy_margin: float = 0.05


@dataclass(frozen=True)
class GoldenReport:
    """Both models' answers on the golden rows, compared."""

    rows: int
    agreement: float | None
    max_abs_error: float | None
    candidate_accuracy: float | None = None
    stable_accuracy: float | None = None
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """Whether every threshold was met."""
        return not self.problems

    def summary(self) -> str:
        """One line for a CI log."""
        parts = [f"{self.rows} rows"]
        if self.agreement is not None:
            parts.append(f"label agreement {self.agreement:.1%}")
        if self.max_abs_error is not None:
            parts.append(f"max |diff| {self.max_abs_error:.4g}")
        if self.candidate_accuracy is not None:
            parts.append(
                f"accuracy {self.candidate_accuracy:.1%} (stable {self.stable_accuracy:.1%})"
            )
        return ", ".join(parts)


def _label_output(outputs: Mapping[str, npt.NDArray[np.generic]]) -> str | None:
    if "label" in outputs:
        return "label"
    for name, value in outputs.items():
        if not np.issubdtype(value.dtype, np.floating):
            return name
    return None


def compare_outputs(
    candidate: Mapping[str, npt.NDArray[np.generic]],
    stable: Mapping[str, npt.NDArray[np.generic]],
    expected: npt.NDArray[np.generic] | None = None,
    thresholds: GoldenThresholds = GoldenThresholds(),
) -> GoldenReport:
    """Compare both models' outputs on the same rows (first axis = rows)."""
    rows = len(next(iter(stable.values()))) if stable else 0
    if rows == 0:
        return GoldenReport(0, None, None, problems=("no golden rows to compare",))
    problems: list[str] = []
    label = _label_output(stable)
    agreement = None
    cand_labels = stable_labels = None
    if label is not None and label in candidate:
        cand_labels = np.asarray(candidate[label]).reshape(rows, -1)[:, 0]
        stable_labels = np.asarray(stable[label]).reshape(rows, -1)[:, 0]
        agreement = float(np.mean(cand_labels.astype(str) == stable_labels.astype(str)))
        if agreement < thresholds.min_agreement:
            problems.append(
                f"the candidate agrees with the stable model on {agreement:.1%} of {rows} rows, "
                f"less than {thresholds.min_agreement:.1%}"
            )
    max_err = None
    for name, s in stable.items():
        c = candidate.get(name)
        if c is None or not np.issubdtype(s.dtype, np.floating) or c.shape != s.shape:
            continue
        err = float(np.max(np.abs(c.astype(np.float64) - s.astype(np.float64))))
        max_err = err if max_err is None else max(max_err, err)
    limit = thresholds.max_abs_error
    if limit is not None and max_err is not None and max_err > limit:
        problems.append(f"float outputs differ by up to {max_err:.4g}, more than {limit}")
    cand_acc = stable_acc = None
    if expected is not None and cand_labels is not None and stable_labels is not None:
        truth = np.asarray(expected).reshape(-1).astype(str)
        # Labels may come as 2 vs 2.0 from a CSV: compare numerically when both sides are numbers.
        cand_acc = _accuracy(cand_labels, truth)
        stable_acc = _accuracy(stable_labels, truth)
        floor = (
            thresholds.min_accuracy
            if thresholds.min_accuracy is not None
            else stable_acc - thresholds.accuracy_margin
        )
        if cand_acc < floor:
            problems.append(
                f"candidate accuracy {cand_acc:.1%} on the expected labels is below {floor:.1%} "
                f"(stable: {stable_acc:.1%})"
            )
    return GoldenReport(rows, agreement, max_err, cand_acc, stable_acc, tuple(problems))


def _accuracy(labels: npt.NDArray[np.generic], truth: npt.NDArray[np.str_]) -> float:
    try:
        return float(np.mean(labels.astype(np.float64) == truth.astype(np.float64)))
    except ValueError:
        return float(np.mean(labels.astype(str) == truth))

"""bnfold: fold BatchNormalization into the Conv, ConvTranspose, Gemm and MatMul around it in
ONNX models, and prove the result equivalent.

    import onnx, bnfold

    fused, report = bnfold.fold(onnx.load("model.onnx"))   # also bytes, str or os.PathLike
    onnx.save(fused, "fused.onnx")
    print(len(report["folds"]), report["verification"]["status"])

    bnfold.verify("model.onnx", "other.onnx")    # raises bnfold.VerificationFailed on a mismatch
    bnfold.inspect("model.onnx")                 # the readiness report, as a dict

The keyword options mirror the command line's flags (``only=`` is ``--only``, ``dims=`` is
``--dim NAME=VALUE``, and so on); reports are plain dicts in the shape of the JSON report
(``schema/report.schema.json``). The work runs in Rust with the GIL released. ``onnx`` is not
needed: a model is recognised by its ``SerializeToString``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from typing import (
    Any,
    Dict,
    Iterator,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from bnfold import _native
from bnfold._errors import BnfoldError, InvalidModel, NotVerifiedWarning, VerificationFailed

__version__: str = _native.__version__

__all__ = [
    "BnfoldError",
    "InvalidModel",
    "NotVerifiedWarning",
    "VerificationFailed",
    "fold",
    "inspect",
    "verify",
    "__version__",
]

#: A report: the JSON report of the command line, as a dict.
Report = Dict[str, Any]

#: A model: an ``onnx.ModelProto`` (anything with ``SerializeToString``), its bytes, or the path
#: of its file (the only way for a model over protobuf's 2 GB limit or with external data).
ModelLike = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", Any]

#: Real data for graph inputs, by name: paths of ``.npy`` files, or arrays (numpy).
InputData = Mapping[str, Any]


def fold(
    model: ModelLike,
    *,
    output: Union[str, "os.PathLike[str]", None] = None,
    force: bool = False,
    verify: bool = True,
    require_verify: bool = False,
    only: Optional[Sequence[str]] = None,
    skip_nodes: Sequence[str] = (),
    inputs_are_constants: bool = False,
    decompose_standalone: bool = False,
    merge_branches: bool = False,
    keep_constant_nodes: bool = False,
    equalize: Union[bool, str] = False,
    readiness: bool = True,
    seed: Optional[int] = None,
    samples: int = 3,
    dims: Optional[Mapping[str, int]] = None,
    input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    inputs: Optional[InputData] = None,
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
) -> Tuple[Any, Report]:
    """Folds every foldable BatchNormalization of ``model`` and verifies the result.

    Returns ``(fused, report)``: ``fused`` is of the model's own type when given an
    ``onnx.ModelProto``, ``bytes`` when given bytes or a path, and ``None`` when written to
    ``output`` (atomically, external data beside it; an existing file is replaced only with
    ``force=True``, and nothing the model was read from is ever written).

    Options, as the command line's flags: ``verify=False`` is ``--no-verify``,
    ``require_verify`` fails when verification cannot run, ``only`` limits the layer kinds
    (``"conv"``, ``"convtranspose"``, ``"gemm"``, ``"matmul"``), ``skip_nodes`` names
    BatchNormalization nodes (or their outputs) to leave, ``inputs_are_constants``,
    ``decompose_standalone``, ``merge_branches``, ``keep_constant_nodes`` (by default a weight
    stored as a ``Constant`` node becomes an initializer), ``equalize`` (cross-layer
    equalization of Conv, ConvTranspose, Gemm and MatMul pairs: ``True`` or ``"exact"``, or
    ``"absorb"`` for high-bias absorption too, an approximation whose change the report
    measures), ``readiness=False`` is ``--no-readiness``;
    verification's ``seed``, ``samples``, ``dims`` (symbolic dimension values),
    ``input_shapes``, ``inputs`` (real input data) and ``atol``/``rtol``.

    Raises ``VerificationFailed`` (carrying the report) when the fused model is not
    equivalent, ``InvalidModel`` for a model bnfold cannot read (naming the node or tensor),
    ``OSError`` for files and ``ValueError`` for options; warns ``NotVerifiedWarning`` when
    verification could not run.
    """
    source, proto_type = _source(model)
    with _input_files(inputs) as input_paths:
        options: Dict[str, Any] = {
            "output": None if output is None else os.fsdecode(output),
            "force": force,
            "verify": verify,
            "require_verify": require_verify,
            "only": None if only is None else _names(only, "only"),
            "skip_nodes": _names(skip_nodes, "skip_nodes"),
            "inputs_are_constants": inputs_are_constants,
            "decompose_standalone": decompose_standalone,
            "merge_branches": merge_branches,
            "keep_constant_nodes": keep_constant_nodes,
            "equalize": equalize,
            "readiness": readiness,
            **_verify_options(seed, samples, dims, input_shapes, input_paths, atol, rtol),
        }
        data, report_json, failed = _native.fold(source, options)
    report: Report = json.loads(report_json)
    _check(report, failed, "fused model")
    if data is None or proto_type is None:
        return data, report
    return proto_type.FromString(data), report


def verify(
    original: ModelLike,
    candidate: ModelLike,
    *,
    seed: Optional[int] = None,
    samples: int = 3,
    dims: Optional[Mapping[str, int]] = None,
    input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    inputs: Optional[InputData] = None,
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    float_folds: bool = False,
) -> Report:
    """Checks that ``candidate`` computes what ``original`` does (as ``bnfold verify``): the
    folds it finds are proven element by element, the whole models run on random (or given)
    inputs. Returns the report when they agree; raises ``VerificationFailed`` (carrying the
    report) when they do not or when the check cannot run, as the command line exits 1."""
    with _input_files(inputs) as input_paths:
        options = {
            "float_folds": float_folds,
            **_verify_options(seed, samples, dims, input_shapes, input_paths, atol, rtol),
        }
        report_json, passed = _native.verify(
            _source(original)[0], _source(candidate)[0], options
        )
    report: Report = json.loads(report_json)
    if not passed:
        verification = report["verification"]
        raise VerificationFailed(_message(verification), report)
    return report


def inspect(model: ModelLike, *, inputs_are_constants: bool = False) -> Report:
    """Every normalization of ``model`` and how it would fold, and the quantization readiness
    of the folded weights (as ``bnfold inspect --report json``)."""
    return json.loads(_native.inspect(_source(model)[0], inputs_are_constants))


def _source(model: ModelLike) -> Tuple[Union[bytes, str], Optional[type]]:
    """The model as the extension takes it (bytes or a path), and the protobuf type to
    return the fused model as (when given one)."""
    if isinstance(model, bytes):
        return model, None
    if isinstance(model, (bytearray, memoryview)):
        return bytes(model), None
    if isinstance(model, (str, os.PathLike)):
        return os.fsdecode(model), None
    serialize = getattr(model, "SerializeToString", None)
    if not callable(serialize):
        raise TypeError(
            "model: expected an onnx.ModelProto, bytes, str or os.PathLike, "
            f"not {type(model).__name__}"
        )
    try:
        return serialize(), type(model)
    except ValueError as e:
        raise ValueError(
            f"model: {e} (a model over protobuf's 2 GB limit goes by path: save it with "
            "onnx.save(model, path, save_as_external_data=True))"
        ) from e


def _names(names: Union[str, Sequence[str]], option: str) -> list:
    if isinstance(names, str):
        return [names]
    names = list(names)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{option}: expected names (str), got {type(name).__name__}")
    return names


def _verify_options(
    seed: Optional[int],
    samples: int,
    dims: Optional[Mapping[str, int]],
    input_shapes: Optional[Mapping[str, Sequence[int]]],
    inputs: Dict[str, str],
    atol: Optional[float],
    rtol: Optional[float],
) -> Dict[str, Any]:
    return {
        "seed": seed,
        "samples": samples,
        "dims": dict(dims or {}),
        "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
        "inputs": inputs,
        "atol": atol,
        "rtol": rtol,
    }


@contextlib.contextmanager
def _input_files(inputs: Optional[InputData]) -> Iterator[Dict[str, str]]:
    """Paths of ``.npy`` files for the given input data; arrays are saved to a temporary
    folder, removed afterwards."""
    if not inputs:
        yield {}
        return
    with tempfile.TemporaryDirectory(prefix="bnfold-inputs-") as folder:
        paths: Dict[str, str] = {}
        for i, (name, value) in enumerate(inputs.items()):
            if isinstance(value, (str, os.PathLike)):
                paths[name] = os.fsdecode(value)
                continue
            import numpy  # only when arrays are given

            path = os.path.join(folder, f"input{i}.npy")
            numpy.save(path, numpy.asarray(value), allow_pickle=False)
            paths[name] = path
        yield paths


def _message(verification: Dict[str, Any]) -> str:
    reason = verification.get("reason") or "see the report"
    if verification.get("status") == "not_verified":
        return f"not verified: {reason}"
    return f"verification failed: {reason}"


def _check(report: Report, failed: bool, what: str) -> None:
    verification = report.get("verification")
    if failed:
        raise VerificationFailed(f"{_message(verification)}; no {what} written", report)
    if verification and verification.get("status") == "not_verified":
        warnings.warn(_message(verification), NotVerifiedWarning, stacklevel=3)

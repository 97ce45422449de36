"""The exceptions bnfold raises (besides ``OSError``s for files and ``ValueError`` for arguments)."""

from __future__ import annotations

from typing import Any, Dict


class BnfoldError(Exception):
    """Base of bnfold's own exceptions."""


class InvalidModel(BnfoldError, ValueError):
    """The model is not valid ONNX, or not one bnfold can read; the message names the node or
    tensor (the command line exits 2 for it)."""


class VerificationFailed(BnfoldError):
    """The fused (or candidate) model was not proven equivalent to the original (the command
    line exits 1 for it). Nothing was written. ``report`` is the whole report, as a dict;
    ``report["verification"]["status"]`` is ``"failed"`` or, when verification was required,
    ``"not_verified"``."""

    def __init__(self, message: str, report: Dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


class NotVerifiedWarning(UserWarning):
    """Verification could not run (the reason is in the message and the report); the fused
    model was returned anyway, as the command line does without ``--require-verify``."""

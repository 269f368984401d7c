"""The one error tree of edgefleet.

Every error a user can cause or meet is an ``EdgefleetError``; each class has an
``exit_code`` so the CLI turns errors into process exit codes in one place
(:func:`edgefleet.cli.main`).

    EdgefleetError (1)
    ├── ConfigError (2)                 bad option, flag or config file value
    │   └── SampleRequiredError (2)     pack cannot make up inputs the model runs on: give --sample
    ├── InvalidInputError (3)           input tensor of the wrong shape/dtype, NaN/inf, unreadable input file
    ├── BundleError (4)
    │   ├── BundleFormatError (4)       missing/unparseable manifest, unknown fields, bad archive
    │   │   └── UnsupportedFormatError (5)  model format, manifest format version or runtime we cannot run
    │   │       └── UnsupportedModelError (5)   a model tensor type no edgefleet API can carry (ONNX sequence/optional)
    │   ├── BundleIntegrityError (6)    hash or size mismatch, missing or extra file, truncated archive
    │   └── SignatureError (7)          unsigned, wrong key, bad signature
    ├── UnsafeArchiveError (8)          archive with absolute paths, "..", links, or over the size cap
    ├── RuntimeBackendError (9)         backend missing or failed to load/run a model
    ├── CompileError (10)               a compiler pass failed; names the pass and what to change
    │   └── AccuracyBudgetError (11)    no variant met the accuracy budget
    ├── UpdateRejectedError (12)        the device agent refused an update (reason attached)
    ├── StoreError (13)                 the device model store is missing or inconsistent
    ├── SyncError (14)                  cloud sync: broker, protocol or coordinator failures
    │   └── ProtocolError (15)          a malformed or unsupported message
    └── SessionError (16)               a model Session can no longer run (its model was swapped for
                                        one with another signature, or closed)
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Root of every error raised by edgefleet."""

    exit_code = 1


class ConfigError(EdgefleetError):
    exit_code = 2


class SampleRequiredError(ConfigError):
    """Synthetic smoke-test inputs do not run the model; real sample inputs are needed."""

    exit_code = 2


class InvalidInputError(EdgefleetError, ValueError):
    exit_code = 3


class BundleError(EdgefleetError):
    exit_code = 4


class BundleFormatError(BundleError):
    exit_code = 4


class UnsupportedFormatError(BundleFormatError):
    exit_code = 5


class UnsupportedModelError(UnsupportedFormatError):
    """The model has a tensor whose type edgefleet cannot pass (named in the message)."""

    exit_code = 5


class BundleIntegrityError(BundleError):
    exit_code = 6


class SignatureError(BundleError):
    exit_code = 7


class UnsafeArchiveError(BundleError):
    exit_code = 8


class RuntimeBackendError(EdgefleetError):
    exit_code = 9


class CompileError(EdgefleetError):
    exit_code = 10


class AccuracyBudgetError(CompileError):
    exit_code = 11


class UpdateRejectedError(EdgefleetError):
    """An update was refused. ``reason`` is a short machine-readable code."""

    exit_code = 12

    def __init__(self, message: str, reason: str = "rejected") -> None:
        super().__init__(message)
        self.reason = reason


class StoreError(EdgefleetError):
    exit_code = 13


class SyncError(EdgefleetError):
    exit_code = 14


class ProtocolError(SyncError):
    exit_code = 15


class SessionError(EdgefleetError):
    exit_code = 16


__all__ = [
    "EdgefleetError",
    "ConfigError",
    "SampleRequiredError",
    "InvalidInputError",
    "BundleError",
    "BundleFormatError",
    "UnsupportedFormatError",
    "UnsupportedModelError",
    "BundleIntegrityError",
    "SignatureError",
    "UnsafeArchiveError",
    "RuntimeBackendError",
    "CompileError",
    "AccuracyBudgetError",
    "UpdateRejectedError",
    "StoreError",
    "SyncError",
    "ProtocolError",
    "SessionError",
]

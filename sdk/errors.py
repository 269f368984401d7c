"""The one error tree of edgefleet.

Every error a user can cause or meet is an ``EdgefleetError``; each class has an
``exit_code`` so the CLI turns errors into process exit codes in one place
(:func:`edgefleet.cli.main`).

    EdgefleetError (1)
    ├── ConfigError (2)                 bad option, flag or config file value
    │   ├── SampleRequiredError (2)     pack cannot make up inputs the model runs on: give --sample
    │   └── MissingDependencyError (2)  an optional library the chosen feature needs is not installed
    │                                   (boto3 for an S3 bundle origin)
    ├── InvalidInputError (3)           input tensor of the wrong shape/dtype, NaN/inf, unreadable input file
    ├── BundleError (4)
    │   ├── BundleFormatError (4)       missing/unparseable manifest, unknown fields, bad archive
    │   │   └── UnsupportedFormatError (5)  model format, manifest format version or runtime we cannot run
    │   │       └── UnsupportedModelError (5)   a model tensor type no edgefleet API can carry (ONNX sequence/optional)
    │   ├── BundleIntegrityError (6)    hash or size mismatch, missing or extra file, truncated archive
    │   └── SignatureError (7)          unsigned, wrong key, bad signature
    │       ├── UnsignedBundleError (7) a signature is required and the bundle has none
    │       └── TrustError (17)         TUF repository metadata refused (edgefleet.trust, python-tuf)
    │           ├── ThresholdError (18)       a role signed by fewer than its threshold of its own keys
    │           │                             (one of two root keys; the online key signing targets)
    │           ├── MetadataExpiredError (19) expired metadata beyond the clock-skew tolerance (freeze)
    │           ├── RollbackError (20)        a metadata version older than one already trusted
    │           ├── MixAndMatchError (21)     metadata whose version is not the one timestamp/snapshot name
    │           ├── TargetMismatchError (22)  a bundle whose length or sha256 differs from its signed
    │           │                             target (tampered, extraneous or endless data), or whose
    │           │                             manifest version differs from the target's
    │           ├── UnknownTargetError (23)   no signed target for this model and version
    │           │   └── UnknownModelError (24)    no delegation for this model name
    │           ├── WrongModelError (25)      a model key signing another model's name, or a bundle whose
    │           │                             manifest names another model than its target path
    │           ├── RevokedKeyError (26)      signed by a key revoked for that model
    │           └── MetadataFormatError (27)  unparseable, oversized (endless data) or missing metadata
    ├── UnsafeArchiveError (8)          archive with absolute paths, "..", links, or over the size cap
    ├── RuntimeBackendError (9)         backend missing or failed to load/run a model
    ├── CompileError (10)               a compiler pass failed; names the pass and what to change
    │   └── AccuracyBudgetError (11)    no variant met the accuracy budget
    ├── UpdateRejectedError (12)        the device agent refused an update (reason attached)
    ├── StoreError (13)                 the device model store is missing or inconsistent
    ├── SyncError (14)                  cloud sync: broker, protocol or coordinator failures
    │   ├── ProtocolError (15)          a malformed or unsupported message
    │   └── RolloutError (28)           a rollout did not reach its goal (fleet deploy --wait: still running
    │       │                           at the wait's end)
    │       ├── ActionRefusedError (29)     a rollout action that does not apply to the deployment's state
    │       │                               (resume on a halted one, pause on a rolled-back one: API 409)
    │       ├── RolloutHaltedError (30)     the health gate halted it (the failing devices named)
    │       ├── RolloutRolledBackError (31) it was rolled back
    │       ├── RolloutCanceledError (32)   it was canceled
    │       └── RollbackIncompleteError (33) fleet rollback: a device's rollback failed or got no answer in time
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


class MissingDependencyError(ConfigError):
    """An optional library the chosen feature needs is not installed (the message says which extra to install)."""

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


class UnsignedBundleError(SignatureError):
    exit_code = 7


class TrustError(SignatureError):
    """TUF repository metadata refused the update (see :mod:`edgefleet.trust`)."""

    exit_code = 17


class ThresholdError(TrustError):
    exit_code = 18


class MetadataExpiredError(TrustError):
    exit_code = 19


class RollbackError(TrustError):
    exit_code = 20


class MixAndMatchError(TrustError):
    exit_code = 21


class TargetMismatchError(TrustError):
    exit_code = 22


class UnknownTargetError(TrustError):
    exit_code = 23


class UnknownModelError(UnknownTargetError):
    exit_code = 24


class WrongModelError(TrustError):
    exit_code = 25


class RevokedKeyError(TrustError):
    exit_code = 26


class MetadataFormatError(TrustError):
    exit_code = 27


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


class RolloutError(SyncError):
    """A rollout did not reach its goal; the subclasses say how it ended."""

    exit_code = 28


class ActionRefusedError(RolloutError):
    """A rollout action (pause, resume, rollback, cancel) the deployment's state does not allow: nothing changed."""

    exit_code = 29


class RolloutHaltedError(RolloutError):
    exit_code = 30


class RolloutRolledBackError(RolloutError):
    exit_code = 31


class RolloutCanceledError(RolloutError):
    exit_code = 32


class RollbackIncompleteError(RolloutError):
    """Devices ordered back did not all report a rollback: one failed or did not answer in time."""

    exit_code = 33


class SessionError(EdgefleetError):
    exit_code = 16


__all__ = [
    "EdgefleetError",
    "ConfigError",
    "SampleRequiredError",
    "MissingDependencyError",
    "InvalidInputError",
    "BundleError",
    "BundleFormatError",
    "UnsupportedFormatError",
    "UnsupportedModelError",
    "BundleIntegrityError",
    "SignatureError",
    "UnsignedBundleError",
    "TrustError",
    "ThresholdError",
    "MetadataExpiredError",
    "RollbackError",
    "MixAndMatchError",
    "TargetMismatchError",
    "UnknownTargetError",
    "UnknownModelError",
    "WrongModelError",
    "RevokedKeyError",
    "MetadataFormatError",
    "UnsafeArchiveError",
    "RuntimeBackendError",
    "CompileError",
    "AccuracyBudgetError",
    "UpdateRejectedError",
    "StoreError",
    "SyncError",
    "ProtocolError",
    "RolloutError",
    "ActionRefusedError",
    "RolloutHaltedError",
    "RolloutRolledBackError",
    "RolloutCanceledError",
    "RollbackIncompleteError",
    "SessionError",
]

"""The compiler's example digits CNN compiled with a trainable head: ``--trainable-head 1 --prune 0.8
--quantize int8`` (a pruned int8 LiteRT backbone, the last Dense kept float32), signed, as ``OUT/v1`` and
``OUT/v1.efb``. Small and quick (2 training epochs, 1 of pruning).

Run as a script in its own process (``python tests/federated/make_head_cnn.py OUT PRIVATE_KEY``) so the test
process never imports TensorFlow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(out: Path, key: str) -> None:
    from edgefleet.compiler import compile_model
    from edgefleet.compiler.config import CompileConfig, DataConfig, HeadConfig, OutputConfig, PruneConfig, QuantMode
    from edgefleet.compiler.examples import train_digits, write_digits

    train, test = write_digits(out / "data")
    train_digits(out / "digits.keras", epochs=2, overwrite=True)
    cfg = CompileConfig(
        data=DataConfig(train=str(train), calibration=str(train), eval=str(test)),
        output=OutputConfig(latency_runs=5, report=False, key=key, name="digits", version="1", archive=True),
        quantize=QuantMode.INT8, prune=PruneConfig(sparsity=0.8, epochs=1), head=HeadConfig(layers=1))
    compile_model(out / "digits.keras", out / "v1", cfg)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])

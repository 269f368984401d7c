"""Recipe 2: a model with two inputs, fed by name."""
import sys

import numpy as np

import edgefleet

rng = np.random.default_rng(1)
with edgefleet.load(sys.argv[1]) as model:
    for spec in model.inputs:
        print(f"input {spec.name}: {spec.dtype}{spec.shape_text()}, batch axis {spec.batch_axis}")
    one = model.predict({"image": rng.random((1, 8, 8), dtype=np.float32), "vitals": rng.random(4, dtype=np.float32)})
    batch = model.predict({"image": rng.random((5, 1, 8, 8), dtype=np.float32), "vitals": rng.random((5, 4), dtype=np.float32)})
    print(f"one sample -> {one.shape}, a batch of 5 -> {batch.shape}")

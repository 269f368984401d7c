"""Recipe 3: a vision model with dynamic height and width, run at several sizes."""
import sys

import numpy as np

import edgefleet

with edgefleet.load(sys.argv[1]) as model:
    print("dynamic dimensions:", model.inputs[0].dynamic_dims)
    for h, w in ((48, 192), (64, 256), (120, 160)):
        heatmap = model.predict(np.random.default_rng(h).random((1, 3, h, w), dtype=np.float32))
        print(f"image 1x3x{h}x{w} -> heatmap {heatmap.shape}")

"""Sample inputs for pack --sample and predict --input (one array per input name)."""
import sys

import numpy as np

rng = np.random.default_rng(2)
out = sys.argv[1]
np.savez(f"{out}/fusion_sample.npz", image=rng.random((4, 1, 8, 8), dtype=np.float32), vitals=rng.random((4, 4), dtype=np.float32))
np.savez(f"{out}/detector_sample.npz", image=rng.random((1, 3, 48, 192), dtype=np.float32))

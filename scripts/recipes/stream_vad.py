"""Recipe 1: a streaming voice-activity model with state, fed from a microphone-like stream."""
import sys

import numpy as np

import edgefleet

audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32)  # 1 s at 16 kHz
with edgefleet.load(sys.argv[1]) as model:
    sess = model.session()  # carries `state` -> `stateN` from call to call
    for chunk in np.array_split(audio, 7):  # chunks of any length, as they arrive
        probs = sess.push(chunk, other_inputs={"sr": np.int64(16000)})  # one row per completed window
        if probs is not None:
            print(f"{len(chunk)} samples -> speech probability {[round(float(p), 3) for p in probs.ravel()]}")
    sess.reset()  # the next stream starts from the initial state

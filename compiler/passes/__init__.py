"""Compiler passes, each a module with a typed config (see :mod:`edgefleet.compiler.config`).

Keras passes (prune, structured, distill) take and return Keras 3 models;
:mod:`.export` and :mod:`.quantize` turn models into ``.tflite``/``.onnx``
files. TensorFlow is imported inside these modules only.
"""

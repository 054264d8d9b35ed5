"""Hands annotator: MANO hand parameters per person. Importing the package registers its backends."""

from annotators.hands import hamer  # noqa: F401  (registers hands/hamer, hands/hamer-onnx)

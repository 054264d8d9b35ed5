"""Hands annotator: MANO hand parameters per person. Importing the package registers its backends:
``hands/mano-ik`` (embedded, default: inverse kinematics on MediaPipe's 3D hand landmarks) and
``hands/hamer`` / ``hands/hamer-onnx`` (reference, user-supplied weights)."""

from annotators.hands import hamer, mano_ik  # noqa: F401

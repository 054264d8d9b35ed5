"""Face annotator: FLAME face parameters per person. Importing the package registers its backends."""

from annotators.face import teaser  # noqa: F401  (registers face/teaser, face/teaser-onnx)

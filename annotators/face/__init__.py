"""Face annotator: FLAME face parameters per person. Importing the package registers its backends:
``face/flame-fit`` (embedded, default: FLAME fitted to MediaPipe's 478 face landmarks) and
``face/teaser`` / ``face/teaser-onnx`` (reference, user-supplied weights)."""

from annotators.face import flame_fit, teaser  # noqa: F401

"""Annotators: the pipeline stages, found through a registry (``annotators.base.STAGES``).

Shared floor, imported by every stage and by the drivers: :mod:`annotators.base` (the :class:`~annotators.base.Stage`
contract, typed stage configs, error policy, registry), :mod:`annotators.batches` (batch helpers) and
:mod:`annotators.images` (decoding, boxes, regions of interest, crops, person segmentation). One module per
annotator backend above it (``persons``, ``keypoints``, ``wholebody_onnx``, ``body``, ``hands/*``, ``face/*``,
``refine``, ``quality``); a backend never imports another backend.
"""

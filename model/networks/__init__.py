"""Network architectures as the project's own code: the ViT backbone (HaMeR, PEAR), HaMeR's MANO head,
MobileNetV3 feature extractors and the TEASER/SMIRK FLAME encoders. Their parameter names follow the
official implementations, so that user-supplied official weights load strictly (``model.checkpoints``)."""

"""Body models (SMPL, SMPL-X, FLAME, MANO, EHM) and their asset files, rotations, mesh rendering and soft
silhouettes, keypoint metrics, and the networks of the reference backends (ViT, HaMeR, TEASER) with strict
checkpoint loading."""

"""Body models (SMPL, SMPL-X, FLAME, MANO, EHM), body-model assets, the PEAR regressor, renderer, losses, metrics."""

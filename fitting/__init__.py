"""Batched optimisation: objectives, priors, solvers, cameras, SMPL->SMPL-X transfer, the keypoint body fit,
hand inverse kinematics, the FLAME face fit, per-part refinement with wrist integration, quality scores."""

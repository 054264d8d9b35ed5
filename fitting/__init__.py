"""Batched optimisation: objectives, priors, solvers, SMPL->SMPL-X transfer, refinement, quality."""

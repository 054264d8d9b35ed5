"""Annotators (persons, keypoints, body, hands, face), one module each, found through a registry."""

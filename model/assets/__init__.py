"""Body-model assets: the files of SMPL, SMPL-X, FLAME, MANO and their correspondences.

- :mod:`model.assets.safe_pickle`: ``safe_load_pickle`` / ``safe_loads``, a restricted unpickler
  (numpy, scipy.sparse, chumpy stand-ins; anything else is refused, nothing runs).
- :mod:`model.assets.loaders`: ``load_body_model`` and the correspondence / landmark loaders.
- :mod:`model.assets.catalog`: the expected files of a body-model folder, ``asset_file``.
- :mod:`model.assets.check`: ``check_assets``, ``asset_hashes``, ``kit_kind``.
- :mod:`model.assets.convert`: pickle-free ``.npz`` copies.
- :mod:`model.assets.synthetic`: ``synthesize_kit``, the licence-free stand-in kit.
- :mod:`model.assets.layouts`: official counts, joint names, kinematic trees.

See docs/assets.md.
"""

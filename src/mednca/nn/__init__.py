"""The networks: the NCA update rule (:mod:`.steps`, :mod:`.level`), the two-level
:class:`MedNCA`, the UNet baselines, a plain reference Med-NCA, and building/loading them."""

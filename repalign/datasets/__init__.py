"""Real input sets built from data that installed packages ship (no download).

Study-scale builders, one function ``builder(size, seed=0, **params) -> Dataset`` each
(:class:`repalign.datasets.dataset.Dataset`: records plus builder, seed, size and content hash):
``molecules.ccd_molecules``, ``crystals.aflow_crystals``, ``antibodies.repertoire_records``, and
``eos.delta_eos`` (energy-volume scans of the Delta-codes elemental crystals with their PBE
equations of state, the reference of ``analyses.potential_quality``).
Small fixed sets for the demo and tests: ``structures.crystal_records`` / ``molecule_records`` and
``antibodies.antibody_records``.
"""

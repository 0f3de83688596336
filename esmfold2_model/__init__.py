"""ESMFold2 run as a feature extractor: every stage (ESMC -> pair trunk -> diffusion -> confidence).

- ``load``       offline-first checkpoint loading, dtype and device
- ``featurize``  sequences and complexes -> model features; padded batches with masks
- ``stages``     stable layer names <-> module paths; pair-representation reductions
- ``extractor``  runs only the stages the requested layers need, as released and reproducibly (seeded
                 LM dropout, initial pair state and diffusion noise); memory guard
- ``adapters``   the ``esmfold2``, ``esmfold2-fast`` and ``esmc-*`` model adapters

Built on the ``transformers`` port (``transformers.models.esmfold2``, ``transformers>=5.24``).
Layer names and options: docs/esmfold2-layers.md.
"""

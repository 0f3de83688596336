"""Reproducible studies: one module per study, each runnable as ``python -m analyses.<name>``.

Every study writes its tables (CSV), figures (PNG/PDF) and a README under
``analyses/results/<name>/``; feature caches go to ``analyses/results/<name>/.cache`` (git-ignored).
"""

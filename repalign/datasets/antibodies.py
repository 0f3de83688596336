"""Real antibody sequences that the antibody model packages ship, as sequence records.

The ``igfold``, ``iglm`` and ``antiberty`` wheels ship no sequence files; their package metadata
(the README shown on PyPI, readable with ``importlib.metadata.metadata(NAME)``) holds the only
sequences, and those are four distinct variable-domain chains:

- the paired Fv of IgFold's quick start (heavy + light; also AntiBERTy's README example),
- the nanobody (VHH) of IgFold's quick start,
- the heavy chain of the anti-tissue-factor antibody (PDB 1JPT) of IgLM's README.

They are copied here verbatim (the tests check each still appears in the installed package's
metadata). :func:`antibody_records` builds five records from them: the Fv pair, its heavy and its
light chain alone, the nanobody and the 1JPT heavy chain. That is all the real data on hand, so
``n`` above 5 gives the 5.
"""

from __future__ import annotations

from repalign.errors import RepalignError
from repalign.inputs import Record, sequence_record

IGFOLD_FV_HEAVY = (
    "EVQLVQSGPEVKKPGTSVKVSCKASGFTFMSSAVQWVRQARGQRLEWIGWIVIGSGNTNYAQKFQERVTITRDMSTSTAYMELSSLRSEDTAVYYCAAPYCSSISCNDGFDIWGQGTMVTVS"
)
IGFOLD_FV_LIGHT = "DVVMTQTPFSLPVSLGDQASISCRSSQSLVHSNGNTYLHWYLQKPGQSPKLLIYKVSNRFSGVPDRFSGSGSGTDFTLKISRVEAEDLGVYFCSQSTHVPYTFGGGTKLEIK"
IGFOLD_NANOBODY = (
    "QVQLQESGGGLVQAGGSLTLSCAVSGLTFSNYAMGWFRQAPGKEREFVAAITWDGGNTYYTDSVKGRFTISRDNAKNTVFLQMNSLKPEDTAVYYCAAKLLGSSRYELALAGYDYWGQGTQVTVS"
)
IGLM_1JPT_HEAVY = "EVQLVESGGGLVQPGGSLRLSCAASGFNIKEYYMHWVRQAPGKGLEWVGLIDPEQGNTIYDPKFQDRATISADNSKNTAYLQMNSLRAEDTAVYYCARDTAAYFDYWGQGTLVTVS"

#: (record id, sequence with chains joined by ':', package whose metadata ships it)
ANTIBODIES: tuple[tuple[str, str, str], ...] = (
    ("igfold_fv", f"{IGFOLD_FV_HEAVY}:{IGFOLD_FV_LIGHT}", "igfold"),
    ("igfold_fv_heavy", IGFOLD_FV_HEAVY, "igfold"),
    ("igfold_fv_light", IGFOLD_FV_LIGHT, "igfold"),
    ("igfold_nanobody", IGFOLD_NANOBODY, "igfold"),
    ("iglm_1jpt_heavy", IGLM_1JPT_HEAVY, "iglm"),
)


def antibody_records(n: int = 24) -> list[Record]:
    """The first ``min(n, 5)`` real antibody records (see the module docstring), in a fixed order.

    Pairs are ``HEAVY:LIGHT`` as :mod:`repalign.inputs` writes complexes.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RepalignError(f"antibody_records: n must be a positive integer, got {n!r}")
    return [sequence_record(id_, seq) for id_, seq, _ in ANTIBODIES[:n]]

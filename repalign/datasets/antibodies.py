"""Real antibody variable domains as sequence records: 5 shipped sequences, then 95 germline Fv pairs.

**The 5 shipped sequences.** The ``igfold``, ``iglm`` and ``antiberty`` wheels ship no sequence
files; their package metadata (the README shown on PyPI, readable with
``importlib.metadata.metadata(NAME)``) holds four distinct variable-domain chains: the paired Fv of
IgFold's quick start (also AntiBERTy's README example), the nanobody (VHH) of IgFold's quick start
and the heavy chain of the anti-tissue-factor antibody (PDB 1JPT) of IgLM's README. They are copied
here verbatim and give five records: the Fv pair, its heavy and its light chain alone, the nanobody
and the 1JPT heavy chain.

**The germline Fv pairs** (:func:`germline_fv_pairs`) are assembled at run time from the human
immunoglobulin germline genes (IMGT reference sequences, nucleotides) that the ``olga`` package
(OLGA 1.3.0, Sethna et al., Bioinformatics 35, 2974 (2019)) ships in its default human B-cell
models ``human_B_heavy``, ``human_B_kappa`` and ``human_B_lambda``. Nothing of that data is copied
into this repository; it is read from the installed package (``pip install olga==1.3.0``; only its
data files are read, its code is never imported). Each pair is an unmutated (germline) antibody:

- heavy chain = V + D + J genes, light chain = V + J genes (kappa or lambda), joined end to end and
  translated in the standard genetic code. To put J in frame and avoid stop codons, 0-2 nucleotides
  are trimmed at each joined gene end (the smallest total trim that works, as exonuclease trimming
  does in a real rearrangement); no nucleotides are added. CDR3 is therefore fully germline encoded.
- genes are the functional ones of the models (conserved Cys codon in frame, no stop codon that a
  short trim leaves whole: IGLV9-49 is left out for one), with orphons (``/OR``) and genes used by
  fewer than 1 in 1000 cells of the model left out, one allele per gene (the most used), and a gene
  whose V protein repeats an earlier one's left out (IGKV1D-39 = IGKV1-39);
- pair ``i`` (0-based) takes the ``i``-th heavy V and the ``i``-th light V in order of usage
  (cycling through each list; light V genes of both loci ranked by usage x locus share, kappa 0.6,
  lambda 0.4), then its J given V, and for the heavy chain its D given V and J, from the model's
  gene-usage distributions (fitted by IGoR to real human repertoires). The ``k``-th draw of genes
  takes the quantiles given by the ``k``-th point of the R3 low-discrepancy sequence (Roberts 2018),
  so gene usage follows the model's frequencies without a random generator and the result is the
  same on every machine;
- a draw is redrawn (next point) if its id repeats an earlier one (alleles share a gene name), if
  no trim of 0-2 nucleotides joins it in frame without a stop codon, or if a chain's type cannot be
  told from its framework-4 motif (W-G-x-G heavy, F-G-x-G light, one and not the other); V genes
  that carry the other chain type's motif (IGLV4-69 encodes W-G-T-G in its CDR3) are left out.

Ids name the genes without alleles: ``IGHV3-23_IGHD3-10_IGHJ4__IGKV1-39_IGKJ1``. The pairing of a
heavy with a light chain is made here, not observed in a real B cell.

Licences: ``olga`` is GPL-3.0 (code); the IMGT sequences are IMGT's (https://www.imgt.org, terms of
use there), which is why they are read from the installed package rather than copied.
"""

from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from repalign.datasets.dataset import Dataset, check_size_seed
from repalign.errors import RepalignError
from repalign.inputs import Record, sequence_record
from repalign.packages import package_dir, package_version

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

#: germline pairs after the shipped records: 5 + 95 = 100 records in all
GERMLINE_PAIRS = 95
OLGA_REQUIREMENT = "olga==1.3.0"
MIN_GENE_USAGE = 1e-3
DRAWS_PER_PAIR = 10
LIGHT_LOCUS_SHARE = {"kappa": 0.6, "lambda": 0.4}
#: R3 sequence step: powers of 1/g, g the real root of x**4 = x + 1 (Roberts 2018)
_R3_G = 1.2207440846057594
R3_STEP = np.array([1 / _R3_G, 1 / _R3_G**2, 1 / _R3_G**3])

_BASES = "TCAG"
_CODE = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODON_TABLE = {a + b + c: aa for (a, b, c), aa in zip(itertools.product(_BASES, repeat=3), _CODE)}


def translate(nucleotides: str) -> str:
    """Protein of a nucleotide sequence read from its first base (standard code, ``*`` = stop).

    A trailing partial codon is dropped.
    """
    nt = nucleotides.upper()
    try:
        return "".join(CODON_TABLE[nt[i : i + 3]] for i in range(0, len(nt) - 2, 3))
    except KeyError as exc:
        raise RepalignError(f"translate: codon {exc.args[0]!r} is not made of A, C, G, T") from None


@dataclass(frozen=True)
class Gene:
    name: str  # with allele, e.g. IGHV1-2*02
    sequence: str  # nucleotides
    anchor: int | None = None  # start of the conserved Cys (V) or Trp/Phe (J) codon


@dataclass(frozen=True)
class GermlineFv:
    """One germline heavy:light pair; ``genes`` are the alleles used, heavy V, D, J then light V, J."""

    id: str
    heavy: str
    light: str
    genes: tuple[str, ...]


# ---- the olga model files -------------------------------------------------------------------------


def olga_models_dir() -> Path:
    """The ``default_models`` folder of the installed ``olga`` package (found without importing it)."""
    folder = package_dir("olga")
    if folder is None:
        raise RepalignError(
            f"antibody germline genes need the 'olga' package; pip install '{OLGA_REQUIREMENT}' "
            "(or 'repalign[germline]'), or ask for at most 5 antibody records"
        )
    return folder / "default_models"


def _model_file(locus: str, name: str) -> Path:
    path = olga_models_dir() / f"human_B_{locus}" / name
    if not path.is_file():
        raise RepalignError(f"olga's human_B_{locus} model lacks {name}; reinstall it: pip install '{OLGA_REQUIREMENT}'")
    return path


def _read_gene_lists(locus: str) -> dict[str, list[Gene]]:
    """Genes of ``model_params.txt`` by kind ("V", "D", "J"), in the model's index order."""
    genes: dict[str, list[Gene]] = {}
    kind = None
    for line in _model_file(locus, "model_params.txt").read_text().splitlines():
        if line.startswith("#GeneChoice;"):
            kind = line.split(";")[1][0]  # V_gene / D_gene / J_gene
            genes[kind] = []
        elif line.startswith(("#", "@")):
            kind = None
        elif kind and line.startswith("%"):
            name, seq, index = line[1:].split(";")
            if int(index) != len(genes[kind]):
                raise RepalignError(
                    f"olga's human_B_{locus} model lists genes out of order; reinstall it: pip install '{OLGA_REQUIREMENT}'"
                )
            genes[kind].append(Gene(name, seq.upper()))
    anchored = {}
    for kind, gene_list in genes.items():
        anchors = {}
        if kind in "VJ":
            with _model_file(locus, f"{kind}_gene_CDR3_anchors.csv").open() as f:
                anchors = {row["gene"]: int(row["anchor_index"]) for row in csv.DictReader(f) if row["function"] == "F"}
        anchored[kind] = [Gene(g.name, g.sequence, anchors.get(g.name)) for g in gene_list]
    return anchored


def _read_marginals(locus: str) -> dict[str, dict[tuple[int, ...], np.ndarray]]:
    """``model_marginals.txt``: event -> {parent indices (empty tuple: none) -> probabilities}."""
    marginals: dict[str, dict[tuple[int, ...], np.ndarray]] = {}
    event: str | None = None
    parents: tuple[int, ...] = ()
    for line in _model_file(locus, "model_marginals.txt").read_text().splitlines():
        if line.startswith("@"):
            event = line[1:].strip()
            marginals[event] = {}
        elif line.startswith("#"):
            # "#[v_choice,3],[j_choice,1]" -> (3, 1)
            parents = tuple(int(index) for index in re.findall(r"\[[^,\]]+,(\d+)\]", line))
        elif line.startswith("%") and event is not None:
            marginals[event][parents] = np.array([float(p) for p in line[1:].split(",")])
    return marginals


@dataclass(frozen=True)
class _Locus:
    genes: dict[str, list[Gene]]
    marginals: dict[str, dict[tuple[int, ...], np.ndarray]]
    v_order: tuple[int, ...]  # usable V genes (indices), most used first
    v_usage: tuple[float, ...]


@lru_cache(maxsize=None)
def _load_locus(locus: str) -> _Locus:
    genes, marginals = _read_gene_lists(locus), _read_marginals(locus)
    v_genes, v_usage = genes.get("V", []), marginals.get("v_choice", {}).get(())
    if not v_genes or not genes.get("J") or v_usage is None or len(v_usage) != len(v_genes):
        raise RepalignError(f"olga's human_B_{locus} model is incomplete; reinstall it: pip install '{OLGA_REQUIREMENT}'")
    other_chain_motif = "FG.G" if locus == "heavy" else "WG.G"
    by_gene: dict[str, list[int]] = {}
    for i, gene in enumerate(v_genes):
        by_gene.setdefault(gene.name.split("*")[0], []).append(i)
    candidates = []
    for name, alleles in by_gene.items():
        best = max(alleles, key=lambda i: v_usage[i])  # the most used allele stands for the gene
        gene, usage = v_genes[best], float(sum(v_usage[i] for i in alleles))
        if "/OR" in name or usage < MIN_GENE_USAGE or gene.anchor is None or gene.anchor % 3:
            continue
        protein = translate(gene.sequence[: len(gene.sequence) - 2])  # the codons no 0-2 nt trim cuts
        if "*" in protein or protein[gene.anchor // 3] != "C" or re.search(other_chain_motif, protein):
            continue  # a V gene carrying the other chain type's J motif would read as the other type
        candidates.append((usage, best, protein))
    candidates.sort(key=lambda c: (-c[0], v_genes[c[1]].name))
    order, usages, seen = [], [], set()
    for usage, index, protein in candidates:
        if protein not in seen:  # e.g. IGKV1-39 and IGKV1D-39 encode the same V protein
            seen.add(protein)
            order.append(index)
            usages.append(usage)
    return _Locus(genes, marginals, tuple(order), tuple(usages))


def _quantile_index(probabilities: np.ndarray, u: float, allowed: np.ndarray | None = None) -> int:
    """Index at quantile ``u`` of a discrete distribution (restricted to ``allowed`` if given)."""
    p = np.asarray(probabilities, dtype=float).copy()
    if allowed is not None:
        p[~allowed] = 0.0
    cdf = np.cumsum(p)
    return int(min(int(np.searchsorted(cdf / cdf[-1], u, side="right")), len(p) - 1))


# ---- assembly ---------------------------------------------------------------------------------------


def _join_in_frame(parts: list[str], j_anchor: int, end_residue: str) -> str | None:
    """Join gene segments, trimming 0-2 nucleotides at each joined end, J in frame, no stop codon.

    ``parts`` is V, (D,) J. Trims are tried smallest total first; None if none works.
    """
    n_ends = 2 * (len(parts) - 1)  # V 3', (D 5', D 3',) J 5'
    trims = sorted(itertools.product(range(3), repeat=n_ends), key=lambda t: (sum(t), t))
    for trim in trims:
        pieces, ends = [], list(trim)
        for k, part in enumerate(parts):
            start = ends.pop(0) if k > 0 else 0
            stop = len(part) - (ends.pop(0) if k < len(parts) - 1 else 0)
            pieces.append(part[start:stop])
        j_trim = trim[-1]
        anchor = sum(len(p) for p in pieces[:-1]) + j_anchor - j_trim
        if anchor % 3 or j_trim > j_anchor or (len(parts) == 3 and len(pieces[1]) < 3):
            continue
        protein = translate("".join(pieces))
        if "*" not in protein and protein[anchor // 3] == end_residue:
            return protein
    return None


def _has_one_j_motif(protein: str, residue: str) -> bool:
    """True if the framework-4 motif of this chain type (W-G-x-G heavy, F-G-x-G light) is present and
    the other type's is not, so the chain type can be told from the sequence (Kabat et al. 1991)."""
    other = "F" if residue == "W" else "W"
    return re.search(f"{residue}G.G", protein) is not None and re.search(f"{other}G.G", protein) is None


def _gene_name(gene: Gene) -> str:
    return gene.name.split("*")[0]


@lru_cache(maxsize=1)
def _all_germline_fv_pairs() -> tuple[GermlineFv, ...]:
    heavy = _load_locus("heavy")
    lights = {locus: _load_locus(locus) for locus in LIGHT_LOCUS_SHARE}
    light_order = sorted(  # (usage x locus share, locus, V index), kappa and lambda together
        (
            (usage * LIGHT_LOCUS_SHARE[locus], locus, index)
            for locus, data in lights.items()
            for index, usage in zip(data.v_order, data.v_usage)
        ),
        key=lambda item: (-item[0], lights[item[1]].genes["V"][item[2]].name),
    )
    d_usable = np.array(["/OR" not in g.name for g in heavy.genes["D"]])  # orphons lie off the IGH locus
    pairs: list[GermlineFv] = []
    ids: set[str] = set()
    draw = 0
    for slot in range(GERMLINE_PAIRS):
        v = heavy.v_order[slot % len(heavy.v_order)]
        _, locus, lv_index = light_order[slot % len(light_order)]
        light = lights[locus]
        for _ in range(DRAWS_PER_PAIR):  # a draw that repeats an id or cannot be joined is redrawn
            draw += 1
            u_j, u_d, u_light_j = np.modf(0.5 + draw * R3_STEP)[0]
            j = _quantile_index(heavy.marginals["j_choice"][(v,)], u_j)
            d = _quantile_index(heavy.marginals["d_gene"][(v, j)], u_d, d_usable)
            lj_index = _quantile_index(light.marginals["j_choice"][(lv_index,)], u_light_j)
            hv, hd, hj = heavy.genes["V"][v], heavy.genes["D"][d], heavy.genes["J"][j]
            lv, lj = light.genes["V"][lv_index], light.genes["J"][lj_index]
            id_ = f"{_gene_name(hv)}_{_gene_name(hd)}_{_gene_name(hj)}__{_gene_name(lv)}_{_gene_name(lj)}"
            if id_ in ids or hj.anchor is None or lj.anchor is None:
                continue
            heavy_protein = _join_in_frame([hv.sequence, hd.sequence, hj.sequence], hj.anchor, "W")
            light_protein = _join_in_frame([lv.sequence, lj.sequence], lj.anchor, "F")
            if heavy_protein is None or light_protein is None:
                continue
            if not (_has_one_j_motif(heavy_protein, "W") and _has_one_j_motif(light_protein, "F")):
                continue
            ids.add(id_)
            genes = (hv.name, hd.name, hj.name, lv.name, lj.name)
            pairs.append(GermlineFv(id_, heavy_protein, light_protein, genes))
            break
        else:
            raise RepalignError(
                f"olga's human B-cell models gave no joinable pair for {heavy.genes['V'][v].name} + "
                f"{light.genes['V'][lv_index].name}; reinstall it: pip install '{OLGA_REQUIREMENT}'"
            )
    return tuple(pairs)


def germline_fv_pairs(n: int = GERMLINE_PAIRS) -> list[GermlineFv]:
    """The first ``min(n, 95)`` germline heavy:light pairs (see the module docstring), in a fixed order.

    Needs the ``olga`` package (its data files only).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise RepalignError(f"germline_fv_pairs: n must be a positive integer, got {n!r}")
    return list(_all_germline_fv_pairs()[: min(int(n), GERMLINE_PAIRS)])


def antibody_records(n: int = 48) -> list[Record]:
    """The first ``min(n, 100)`` antibody records, in a fixed order.

    Records 1-5 are the sequences the antibody model packages ship (no extra package needed for
    ``n <= 5``); records 6-100 are germline Fv pairs (:func:`germline_fv_pairs`, needs ``olga``).
    Pairs are ``HEAVY:LIGHT`` as :mod:`repalign.inputs` writes complexes.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise RepalignError(f"antibody_records: n must be a positive integer, got {n!r}")
    records = [sequence_record(id_, seq) for id_, seq, _ in ANTIBODIES[:n]]
    if n > len(ANTIBODIES):
        records += [sequence_record(p.id, f"{p.heavy}:{p.light}") for p in germline_fv_pairs(int(n) - len(ANTIBODIES))]
    return records


# ---- sampled repertoires: V(D)J recombination with insertions, deletions and somatic mutations ------
#
# The recombination model is the one the germline pairs above read genes from: OLGA's human B-cell
# models (IGoR fits to real human repertoires; Marcou et al., Nat. Commun. 9, 561 (2018)). Its
# marginals give, in this order, V, J given V, D given V and J (heavy chain), the 3' deletion of V
# given V, the 5' and 3' deletions of D given D, the 5' deletion of J given J, the number of
# N-nucleotides inserted at each junction and a first-order Markov chain over the inserted bases.
# Negative deletions are palindromic (P) nucleotides: the reverse complement of the gene end is
# appended. The DJ insertion is drawn from the J side and reversed, as OLGA does.

LIGHT_KAPPA_SHARE = 0.6  # human kappa:lambda usage is about 60:40
NAIVE_FRACTION = 0.5  # share of antibodies left unmutated (naive B cells)
#: per-nucleotide mutation rate of the mutated antibodies: Gamma(shape 2, scale 0.025), mean 5 %
#: (IGHV mutation levels of human memory B cells and plasmablasts, typically 2-10 %), capped at 15 %
SHM_SHAPE, SHM_SCALE, SHM_MAX = 2.0, 0.025, 0.15
TRANSITION_SHARE = 0.5  # somatic mutations are about half transitions
_TRANSITION = {"A": "G", "G": "A", "C": "T", "T": "C"}
_COMPLEMENT = str.maketrans("ACGT", "TGCA")
_NT = "ACGT"


def _revcomp(nt: str) -> str:
    return nt.translate(_COMPLEMENT)[::-1]


@lru_cache(maxsize=None)
def _event_values(locus: str) -> dict[str, np.ndarray]:
    """Deletion and insertion events of ``model_params.txt``: nickname -> value of each index."""
    values: dict[str, dict[int, int]] = {}
    nickname = None
    for line in _model_file(locus, "model_params.txt").read_text().splitlines():
        if line.startswith("#Deletion;") or line.startswith("#Insertion;"):
            nickname = line.split(";")[-1].strip()
            values[nickname] = {}
        elif line.startswith(("#", "@")):
            nickname = None
        elif nickname and line.startswith("%"):
            value, index = line[1:].split(";")
            values[nickname][int(index)] = int(value)
    return {k: np.array([v[i] for i in range(len(v))]) for k, v in values.items()}


def _draw(rng: np.random.Generator, probabilities: np.ndarray, allowed: np.ndarray | None = None) -> int:
    p = np.asarray(probabilities, dtype=float).copy()
    if allowed is not None:
        p[~allowed] = 0.0
    total = p.sum()
    if not total > 0:
        raise RepalignError(f"olga's B-cell model has an empty distribution; reinstall it: pip install '{OLGA_REQUIREMENT}'")
    return int(rng.choice(len(p), p=p / total))


def _markov(marginal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P(next | previous) as a 4x4 row-stochastic matrix, its stationary distribution); bases A, C, G, T."""
    raw = np.asarray(marginal, dtype=float).reshape(4, 4)
    transition = raw / raw.sum(axis=1, keepdims=True)
    values, vectors = np.linalg.eig(transition.T)
    stationary = np.abs(np.real(vectors[:, np.argmin(np.abs(values - 1))]))
    return transition, stationary / stationary.sum()


def _insertion(rng: np.random.Generator, length: int, chain: tuple[np.ndarray, np.ndarray]) -> str:
    transition, first = chain
    if length <= 0:
        return ""
    bases = [_draw(rng, first)]
    for _ in range(length - 1):
        bases.append(_draw(rng, transition[bases[-1]]))
    return "".join(_NT[b] for b in bases)


def _cut_right(nt: str, deletion: int) -> str:
    return nt[: len(nt) - deletion] if deletion >= 0 else nt + _revcomp(nt[len(nt) + deletion:])


def _cut_left(nt: str, deletion: int) -> str:
    return nt[deletion:] if deletion >= 0 else _revcomp(nt[:-deletion]) + nt


@dataclass(frozen=True)
class _Rearrangement:
    nucleotides: str
    protein: str
    v_anchor: int  # nucleotide index of the conserved Cys codon
    j_anchor: int  # nucleotide index of the conserved Trp / Phe codon
    genes: tuple[str, ...]

    @property
    def cdr3_length(self) -> int:
        """IMGT CDR3 length in residues (between the conserved Cys and Trp/Phe, both excluded)."""
        return (self.j_anchor - self.v_anchor) // 3 - 1


def _rearrange(rng: np.random.Generator, locus: str, max_tries: int = 1000) -> _Rearrangement:
    """One productive rearrangement of ``locus`` drawn from the model (unproductive draws redrawn)."""
    data = _load_locus(locus)
    genes, marg, values = data.genes, data.marginals, _event_values(locus)
    v_ok = np.zeros(len(genes["V"]), dtype=bool)
    v_ok[list(data.v_order)] = True
    j_ok = np.array([g.anchor is not None for g in genes["J"]])
    residue = "W" if locus == "heavy" else "F"
    heavy = locus == "heavy"
    if heavy:
        d_ok = np.array(["/OR" not in g.name for g in genes["D"]])
        vd_chain, dj_chain = _markov(marg["vd_dinucl"][()]), _markov(marg["dj_dinucl"][()])
    else:
        vj_chain = _markov(marg["vj_dinucl"][()])
    names: tuple[str, ...]  # V, (D,) J gene names
    for _ in range(max_tries):
        v = _draw(rng, marg["v_choice"][()], v_ok)
        j = _draw(rng, marg["j_choice"][(v,)], j_ok)
        vg, jg = genes["V"][v], genes["J"][j]
        assert vg.anchor is not None and jg.anchor is not None  # v_ok and j_ok admit anchored genes only
        del_v = int(values["v_3_del"][_draw(rng, marg["v_3_del"][(v,)])])
        del_j = int(values["j_5_del"][_draw(rng, marg["j_5_del"][(j,)])])
        v_nt, j_nt = _cut_right(vg.sequence, del_v), _cut_left(jg.sequence, del_j)
        if heavy:
            d = _draw(rng, marg["d_gene"][(v, j)], d_ok)
            i5 = _draw(rng, marg["d_5_del"][(d,)])
            i3 = _draw(rng, marg["d_3_del"][(d, i5)])
            d_nt = _cut_right(_cut_left(genes["D"][d].sequence, int(values["d_5_del"][i5])), int(values["d_3_del"][i3]))
            n1 = _insertion(rng, int(values["vd_ins"][_draw(rng, marg["vd_ins"][()])]), vd_chain)
            n2 = _insertion(rng, int(values["dj_ins"][_draw(rng, marg["dj_ins"][()])]), dj_chain)[::-1]
            middle, names = n1 + d_nt + n2, (vg.name, genes["D"][d].name, jg.name)
        else:
            middle = _insertion(rng, int(values["vj_ins"][_draw(rng, marg["vj_ins"][()])]), vj_chain)
            names = (vg.name, jg.name)
        j_anchor = len(v_nt) + len(middle) + jg.anchor - del_j
        if j_anchor % 3 or jg.anchor - del_j < 0 or vg.anchor + 3 > len(v_nt) or j_anchor <= vg.anchor:
            continue
        nt = v_nt + middle + j_nt
        protein = translate(nt)
        if "*" in protein or protein[vg.anchor // 3] != "C" or protein[j_anchor // 3] != residue:
            continue
        if not _has_one_j_motif(protein, residue):
            continue
        return _Rearrangement(nt, protein, vg.anchor, j_anchor, names)
    raise RepalignError(f"no productive {locus} rearrangement in {max_tries} draws; reinstall olga: pip install '{OLGA_REQUIREMENT}'")


def _mutate(rng: np.random.Generator, chain: _Rearrangement, rate: float, residue: str) -> tuple[str, int]:
    """Somatic point mutations at ``rate`` per nucleotide. A mutation that makes a stop codon or changes
    the conserved Cys or the framework-4 motif (Trp/Phe-Gly-x-Gly) is not kept (such cells are lost to
    selection) and another position is drawn; a mutated chain that gains the other chain type's
    motif is mutated again from its germline. Returns (protein, number of mutations)."""
    coding = len(chain.nucleotides) // 3 * 3
    target = int(rng.binomial(coding, rate)) if rate > 0 else 0
    j = chain.j_anchor // 3
    protected = {chain.v_anchor // 3: "C", j: residue, j + 1: "G", j + 3: "G"}
    for _ in range(20):
        nt = list(chain.nucleotides)
        done, tries = 0, 0
        while done < target and tries < 20 * target:
            tries += 1
            pos = int(rng.integers(coding))
            old = nt[pos]
            if old not in _TRANSITION:
                continue
            if rng.random() < TRANSITION_SHARE:
                new = _TRANSITION[old]
            else:
                new = [b for b in _NT if b not in (old, _TRANSITION[old])][int(rng.integers(2))]
            codon_start = pos - pos % 3
            codon = "".join(nt[codon_start:codon_start + 3])
            aa = CODON_TABLE[codon[: pos % 3] + new + codon[pos % 3 + 1:]]
            if aa == "*" or protected.get(codon_start // 3, aa) != aa:
                continue
            nt[pos] = new
            done += 1
        protein = translate("".join(nt))
        if _has_one_j_motif(protein, residue):
            return protein, done
    raise RepalignError("somatic mutation kept creating a second framework-4 motif; use another seed")


def repertoire_records(size: int = 1000, seed: int = 0):
    """``size`` paired heavy:light antibodies sampled from OLGA's human B-cell recombination models,
    with somatic point mutations (see the comments above this function).

    Each antibody: a productive heavy rearrangement (V, D, J, deletions, P and N nucleotides) and a
    productive light one (kappa with probability 0.6, else lambda), both translated from the V
    start to the end of J (the trailing partial codon dropped). Unproductive draws (out of frame,
    stop codon, conserved Cys or Trp/Phe lost, chain type not recognisable from the FR4 motif)
    are redrawn, as selection removes them in vivo. Then a share of 0.5 stays unmutated and the
    others get point mutations at a per-nucleotide rate drawn from Gamma(2, 0.025) (mean 5 %,
    at most 15 %), the same rate on both chains. Ids ``ab<seed>-<index>``; a repeated protein pair is
    redrawn. Returns a :class:`repalign.datasets.dataset.Dataset` with per-antibody annotations
    (genes, CDR3 lengths, mutation rate and counts).
    """
    size, seed = check_size_seed(size, seed, "repertoire_records")
    rng = np.random.default_rng(seed)
    records: list[Record] = []
    notes: list[dict] = []
    seen: set[str] = set()
    while len(records) < size:
        heavy = _rearrange(rng, "heavy")
        locus = "kappa" if rng.random() < LIGHT_KAPPA_SHARE else "lambda"
        light = _rearrange(rng, locus)
        rate = 0.0 if rng.random() < NAIVE_FRACTION else float(min(rng.gamma(SHM_SHAPE, SHM_SCALE), SHM_MAX))
        heavy_protein, heavy_mutations = _mutate(rng, heavy, rate, "W")
        light_protein, light_mutations = _mutate(rng, light, rate, "F")
        pair = f"{heavy_protein}:{light_protein}"
        if pair in seen:
            continue
        seen.add(pair)
        id_ = f"ab{seed}-{len(records):05d}"
        records.append(sequence_record(id_, pair))
        hv, hd, hj = (_gene_name(Gene(n, "")) for n in heavy.genes)
        lv, lj = (_gene_name(Gene(n, "")) for n in light.genes)
        notes.append({"heavy_v": hv, "heavy_d": hd, "heavy_j": hj, "light_v": lv, "light_j": lj, "light_locus": locus,
                      "cdr3_heavy": heavy.cdr3_length, "cdr3_light": light.cdr3_length, "mutation_rate": round(rate, 5),
                      "mutations_heavy": heavy_mutations, "mutations_light": light_mutations,
                      "length_heavy": len(heavy_protein), "length_light": len(light_protein)})
    return Dataset(
        name="repertoire_records", records=tuple(records), seed=seed,
        params={"light_kappa_share": LIGHT_KAPPA_SHARE, "naive_fraction": NAIVE_FRACTION,
                "shm_gamma_shape": SHM_SHAPE, "shm_gamma_scale": SHM_SCALE, "shm_max": SHM_MAX,
                "transition_share": TRANSITION_SHARE},
        source={"data": "OLGA human_B_heavy / human_B_kappa / human_B_lambda model files (IMGT genes, IGoR marginals)",
                "olga": package_version("olga")},
        annotations=tuple(notes),
    )

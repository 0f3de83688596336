"""The antibody input set: 5 shipped sequences, then germline Fv pairs assembled from olga's IMGT genes.

The germline checks read olga's model files here with their own parser and translate with
Biopython, independently of repalign.datasets.antibodies.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from Bio.Seq import Seq

from repalign.datasets import antibodies
from repalign.datasets.antibodies import ANTIBODIES, antibody_records, germline_fv_pairs, translate
from repalign.errors import RepalignError
from repalign.models.antiberty import AntiBERTy
from repalign.models.iglm import IgLM, chain_type

AMINO_ACIDS = set("ACDEFGHIKLMNPQRSTVWY")
ID_PATTERN = re.compile(r"^(IGHV[\w-]+)_(IGHD[\w-]+)_(IGHJ\d)__(IG([KL])V[\w-]+)_(IG([KL])J\d)$")
RECORDS = antibody_records(100)
GERMLINE = RECORDS[len(ANTIBODIES) :]


def olga_model(locus: str) -> Path:
    spec = importlib.util.find_spec("olga")
    return Path(list(spec.submodule_search_locations)[0]) / "default_models" / f"human_B_{locus}"


def read_genes(locus: str, kind: str) -> dict[str, list[tuple[str, str]]]:
    """gene name without allele -> [(allele, nucleotides)] from model_params.txt."""
    text = (olga_model(locus) / "model_params.txt").read_text()
    section = text.split(f"#GeneChoice;{kind}_gene;")[1].split("\n#")[0]
    genes: dict[str, list[tuple[str, str]]] = {}
    for line in section.splitlines()[1:]:
        allele, nucleotides, _ = line.lstrip("%").split(";")
        genes.setdefault(allele.split("*")[0], []).append((allele, nucleotides.upper()))
    return genes


def read_anchors(locus: str, kind: str) -> dict[str, int]:
    with open(olga_model(locus) / f"{kind}_gene_CDR3_anchors.csv") as f:
        return {row["gene"]: int(row["anchor_index"]) for row in csv.DictReader(f)}


def protein(nucleotides: str) -> str:
    return str(Seq(nucleotides[: len(nucleotides) // 3 * 3]).translate())


def read_alleles(locus: str, kind: str) -> list[str]:
    """Allele names in the model's index order."""
    section = (olga_model(locus) / "model_params.txt").read_text().split(f"#GeneChoice;{kind}_gene;")[1]
    indexed = {int(line.split(";")[2]): line.lstrip("%").split(";")[0] for line in section.split("\n#")[0].splitlines()[1:]}
    return [indexed[i] for i in range(len(indexed))]


def read_marginal(locus: str, event: str) -> dict[tuple[int, ...], list[float]]:
    """parent indices -> probabilities of one event of model_marginals.txt."""
    block = (olga_model(locus) / "model_marginals.txt").read_text().split(f"@{event}\n")[1].split("\n@")[0]
    out, parents = {}, ()
    for line in block.splitlines():
        if line.startswith("#"):
            parents = tuple(int(i) for i in re.findall(r",(\d+)\]", line))
        elif line.startswith("%"):
            out[parents] = [float(x) for x in line[1:].split(",")]
    return out


# ---- count, order, determinism ---------------------------------------------------------------------


def test_count_order_and_prefixes():
    assert len(antibody_records()) == 48  # the default suits kNN metrics with k=5
    assert len(RECORDS) == 100 and len(antibody_records(1000)) == 100
    assert [r.id for r in RECORDS[:5]] == [a[0] for a in ANTIBODIES]
    assert [r.payload for r in RECORDS[:5]] == [a[1] for a in ANTIBODIES]
    for n in (1, 5, 6, 48, 99):
        assert antibody_records(n) == RECORDS[:n]
    assert antibody_records(np.int64(7)) == RECORDS[:7]
    assert [(p.id, f"{p.heavy}:{p.light}") for p in germline_fv_pairs()] == [(r.id, r.payload) for r in GERMLINE]


def test_same_records_in_a_fresh_interpreter():
    code = (
        "import hashlib; from repalign.datasets.antibodies import antibody_records; "
        "print(hashlib.sha256('\\n'.join(r.id + '=' + r.payload for r in antibody_records(100)).encode()).hexdigest())"
    )
    want = hashlib.sha256("\n".join(r.id + "=" + r.payload for r in RECORDS).encode()).hexdigest()
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": hash_seed}
        )
        assert out.stdout.strip() == want


@pytest.mark.parametrize("n", [0, -3, 2.5, "48", True, None])
def test_bad_n_is_refused(n):
    with pytest.raises(RepalignError, match="positive integer"):
        antibody_records(n)
    with pytest.raises(RepalignError, match="positive integer"):
        germline_fv_pairs(n)


def test_without_olga_the_shipped_records_remain_and_more_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "olga", None)  # importlib then treats olga as not installed
    antibodies._load_locus.cache_clear()
    antibodies._all_germline_fv_pairs.cache_clear()
    try:
        assert antibody_records(5) == RECORDS[:5]
        with pytest.raises(RepalignError, match=r"need the 'olga' package; pip install 'olga==1\.3\.0'") as exc:
            antibody_records(6)
        assert "\n" not in str(exc.value)
    finally:
        antibodies._load_locus.cache_clear()
        antibodies._all_germline_fv_pairs.cache_clear()


# ---- validity --------------------------------------------------------------------------------------


def test_every_record_is_a_valid_variable_domain_pair():
    assert len({r.id for r in RECORDS}) == 100 and len({r.payload for r in RECORDS}) == 100
    loci = Counter()
    for record in GERMLINE:
        match = ID_PATTERN.match(record.id)
        assert match, record.id
        assert match.group(5) == match.group(7), record.id  # light V and J from one locus
        loci[match.group(5)] += 1
        heavy, light = record.chains
        assert set(heavy) <= AMINO_ACIDS and set(light) <= AMINO_ACIDS, record.id
        assert 110 <= len(heavy) <= 135 and 105 <= len(light) <= 120, record.id
        # IgLM's single_chain=auto rule and the conserved residues of a V domain
        assert chain_type(heavy) == "heavy" and chain_type(light) == "light", record.id
        assert heavy.endswith("VSS") and re.search(r"C[A-Z]{6,30}WG.G", heavy), record.id
        assert re.search(r"C[A-Z]{6,15}FG.G", light) and light[-1] in "KL", record.id
    assert loci["K"] >= 30 and loci["L"] >= 30  # both light-chain loci well represented
    for adapter in (IgLM(), AntiBERTy()):
        for record in RECORDS:
            adapter.validate(record)


# ---- provenance: olga's germline genes -------------------------------------------------------------


def test_chains_are_the_named_germline_genes_joined_in_frame():
    """Each chain is exactly the named genes' nucleotides, 0-2 trimmed at each joined end, translated."""
    genes = {
        "IGHV": read_genes("heavy", "V"), "IGHD": read_genes("heavy", "D"), "IGHJ": read_genes("heavy", "J"),
        "IGKV": read_genes("kappa", "V"), "IGKJ": read_genes("kappa", "J"),
        "IGLV": read_genes("lambda", "V"), "IGLJ": read_genes("lambda", "J"),
    }
    functional = {**read_anchors("heavy", "V"), **read_anchors("kappa", "V"), **read_anchors("lambda", "V")}
    j_anchors = {**read_anchors("heavy", "J"), **read_anchors("kappa", "J"), **read_anchors("lambda", "J")}
    trims = range(3)

    def v_alleles(chain: str, name: str) -> list[str]:
        # alleles whose untrimmable codons begin the chain
        return [nt for allele, nt in genes[name[:4]][name] if allele in functional and chain.startswith(protein(nt[:-2]))]

    def j_alleles(chain: str, name: str) -> list[str]:
        # alleles whose part from the conserved W/F codon on ends the chain
        return [nt for allele, nt in genes[name[:4]][name] if allele in j_anchors and chain.endswith(protein(nt[j_anchors[allele] :]))]

    for record in GERMLINE:
        hv, hd, hj, lv, _, lj, _ = ID_PATTERN.match(record.id).groups()
        assert "/OR" not in hd, record.id
        heavy, light = record.chains
        heavy_v, heavy_j = v_alleles(heavy, hv), j_alleles(heavy, hj)
        light_v, light_j = v_alleles(light, lv), j_alleles(light, lj)
        assert heavy_v and heavy_j and light_v and light_j, record.id
        assert any(
            protein(v[: len(v) - a] + d[b : len(d) - c] + j[e:]) == heavy
            for v in heavy_v for _, d in genes["IGHD"][hd] for j in heavy_j
            for a in trims for b in trims for c in trims for e in trims
        ), record.id
        assert any(
            protein(v[: len(v) - a] + j[e:]) == light for v in light_v for j in light_j for a in trims for e in trims
        ), record.id


def test_gene_choice_follows_the_models_usage():
    v_alleles, j_alleles = read_alleles("heavy", "V"), read_alleles("heavy", "J")
    p_v = read_marginal("heavy", "v_choice")[()]
    p_j_given_v = read_marginal("heavy", "j_choice")
    v_usage, j_usage = Counter(), Counter()
    for v, allele in enumerate(v_alleles):
        v_usage[allele.split("*")[0]] += p_v[v]
        for j, p in enumerate(p_j_given_v[(v,)]):
            j_usage[j_alleles[j].split("*")[0]] += p_v[v] * p
    heavy_vs = [ID_PATTERN.match(r.id).group(1) for r in GERMLINE]
    assert heavy_vs[0] == v_usage.most_common(1)[0][0]  # the most used heavy V leads
    ranked = list(dict.fromkeys(heavy_vs))
    assert len(ranked) >= 40 and all(v_usage[g] >= 1e-3 for g in ranked)
    assert {g for g, _ in v_usage.most_common(10)} <= set(ranked)
    assert all(v_usage[a] >= v_usage[b] for a, b in zip(ranked, ranked[1:]))  # then by decreasing usage
    # IGHJ4 dominates human heavy chains: the most common J here is the model's most used J
    j_counts = Counter(ID_PATTERN.match(r.id).group(3) for r in GERMLINE)
    assert j_counts.most_common(1)[0][0] == j_usage.most_common(1)[0][0] == "IGHJ4"


def test_translate_matches_biopython():
    rng = np.random.default_rng(0)
    for length in (0, 2, 3, 31, 300):
        nt = "".join(rng.choice(list("ACGT"), size=length))
        assert translate(nt) == protein(nt)
    assert translate("atgtgg") == "MW"
    with pytest.raises(RepalignError, match="not made of A, C, G, T"):
        translate("ATGNNN")


# ---- sampled repertoires (V(D)J recombination + somatic mutations) ----------------------------------
from repalign.datasets.antibodies import repertoire_records  # noqa: E402

REPERTOIRE = repertoire_records(300, seed=11)


def test_repertoire_chains_are_productive_variable_domains():
    table = REPERTOIRE.table()
    assert len(REPERTOIRE) == 300 and len({r.payload for r in REPERTOIRE}) == 300
    for record, row in zip(REPERTOIRE, table.itertuples()):
        heavy, light = record.chains
        assert set(heavy + light) <= AMINO_ACIDS
        assert chain_type(heavy) == "heavy" and chain_type(light) == "light"
        assert (row.length_heavy, row.length_light) == (len(heavy), len(light))
        assert row.light_j.startswith("IGK" if row.light_locus == "kappa" else "IGL")


def test_unmutated_chains_start_with_their_germline_v_gene():
    """Unmutated antibodies carry their V genes unchanged up to the conserved Cys (genes read here from
    olga's files and translated with Biopython)."""
    table = REPERTOIRE.table()
    naive = table[table.mutation_rate == 0]
    assert (naive.mutations_heavy == 0).all() and (naive.mutations_light == 0).all() and len(naive) > 100
    for row in naive.head(60).itertuples():
        heavy, light = REPERTOIRE[REPERTOIRE.ids.index(row.id)].chains
        for chain, gene, locus in ((heavy, row.heavy_v, "heavy"), (light, row.light_v, row.light_locus)):
            anchors = read_anchors(locus, "V")
            prefixes = {protein(nt)[: anchors[allele] // 3 + 1] for allele, nt in read_genes(locus, "V")[gene]
                        if allele in anchors}
            assert any(chain.startswith(p) and p.endswith("C") for p in prefixes), (row.id, gene)


def test_repertoire_statistics_are_realistic():
    table = REPERTOIRE.table()
    n = len(table)
    # kappa:lambda 60:40 and half of the antibodies unmutated, within 4 binomial standard deviations
    assert abs((table.light_locus == "kappa").mean() - 0.6) < 4 * np.sqrt(0.24 / n)
    assert abs((table.mutation_rate == 0).mean() - 0.5) < 4 * np.sqrt(0.25 / n)
    # human IMGT CDR3 lengths: heavy about 15 residues on average (Briney et al., Nature 566, 393 (2019)), kappa/lambda about 9-11
    assert 13 < table.cdr3_heavy.mean() < 18 and 8 < table.cdr3_light.mean() < 12
    # mutation counts follow the drawn per-nucleotide rate (binomial over the coding nucleotides)
    mutated = table[table.mutation_rate > 0]
    expected = (mutated.mutation_rate * 3 * (mutated.length_heavy + mutated.length_light)).sum()
    observed = (mutated.mutations_heavy + mutated.mutations_light).sum()
    assert abs(observed / expected - 1) < 0.1
    # the mutations are real: a mutated heavy chain differs from every allele of its V gene
    row = mutated.sort_values("mutations_heavy").iloc[-1]
    heavy = REPERTOIRE[REPERTOIRE.ids.index(row.id)].chains[0]
    assert all(not heavy.startswith(protein(nt)[:90]) for _, nt in read_genes("heavy", "V")[row.heavy_v])


def test_repertoire_seed_and_prefix_property():
    again = repertoire_records(300, seed=11)
    assert again.content_hash == REPERTOIRE.content_hash
    first = repertoire_records(40, seed=11)  # a smaller set is the start of the larger one (IgFold's subset)
    assert [r.payload for r in first] == [r.payload for r in REPERTOIRE.records[:40]] and first.ids == REPERTOIRE.ids[:40]
    assert repertoire_records(40, seed=12).content_hash != first.content_hash
    assert REPERTOIRE.provenance()["builder"] == "repertoire_records"
    with pytest.raises(RepalignError, match="size"):
        repertoire_records(0)

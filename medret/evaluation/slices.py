"""Query slices: the automatic "critical" tags on any data, and the masks a judge compares deltas over.

Dense retrievers are known to be fragile on numbers, negation, abbreviations and rare entities, and
compression hurts the long tail first: an average over all queries hides exactly those. Every query of any
data set is tagged with no configuration, by the rules below (the one place they are defined). A query may
carry several tags, or none. Tags come from the query text and the corpus; only tag names leave this module.

Rules (a query carries the tag when ...):

- ``numeric``: it holds a digit, also inside a name ("500 mg", "type 2", NOX2: a model that confuses NOX2
  with NOX4 fails on exactly the number); a number word (two .. twelve, twenty .. ninety, hundred, thousand,
  million, billion, twice, half, percent); a unit as written (mg, mcg, kg, mL, mmol, mmHg, IU, ...; case kept:
  "MG" in capitals is a diagnosis); a dosage word (dose, dosage, dosing); a comparison sign (< > <= >= = ± %)
  or phrase (at least, at most, more/less/fewer/greater/higher/lower than, up to, above, below, exceeding);
  or a Roman numeral after type, stage, grade, class, phase, factor or group ("type VI"). A question that
  only asks for a quantity ("how many people ...") is not numeric: its text holds no number to get wrong.
- ``negation``: a negation cue as a whole word: no, not, n't, cannot, without, never, none, neither, nor,
  nothing, nobody, deny/denies/denied, absence/absent, lack/lacks/lacking/lacked, negative for, free of,
  rule(s)/ruled out, fail(s)/failed to, unable to. Prefixes (non-, un-) are not cues: "non-Hodgkin" is a name.
- ``abbreviation``: a word (letters and digits, starting with a letter, 2..10 characters) with >= 2 upper-case
  letters making up at least half of its letters: HIV, COPD, T2DM, BRCA1, HbA1c, mRNA. Roman numerals (II, VI)
  are not abbreviations, and a query in capitals throughout (>= 4 words, no lower-case letter) carries no
  abbreviation tag: its case says nothing.
- ``rare_term``: a content word (lower-cased word token of >= 3 characters, not only digits, not a stop word)
  whose document frequency in the corpus of N documents is df <= max(2, 0.0002 * N); a word no document
  holds (df = 0) counts. df is counted once per corpus over the lower-cased word tokens of each document's
  text; a corpus over 200,000 documents is counted on 200,000 evenly spaced ones (N is then 200,000).
- ``long_query``: more word tokens than the 90th percentile of this data set's queries (at most about one
  query in ten; none when all queries are equally long).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import numpy as np

from medret.data import RetrievalDataset

AUTO_SLICES = ("numeric", "negation", "abbreviation", "rare_term", "long_query")

WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")  # lower-cased word tokens (df, rare terms, length)
_NUMBER_WORDS = (
    "two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty sixty seventy eighty "
    "ninety hundred hundreds thousand thousands million millions billion twice half percent percentage"
)
# case kept: "MG" in capitals is myasthenia gravis
_UNITS = (
    "mg mcg µg ug ng pg kg g/dL g/dl mg/dL mg/dl mg/kg mL ml dL dl mmol µmol umol nmol mol mEq meq mmHg IU "
    "U/L units bpm kcal cm"
)
_NUMERIC = re.compile(
    r"\d|[<>≤≥=±%]"
    rf"|(?i:\b(?:{'|'.join(_NUMBER_WORDS.split())})\b)"
    r"|(?i:\b(?:dose|doses|dosage|dosages|dosing)\b)"
    r"|(?i:\b(?:at least|at most|up to|above|below|exceed|exceeds|exceeding)\b)"
    r"|(?i:\b(?:more|less|fewer|greater|higher|lower) than\b)"
)
_UNIT = re.compile(rf"(?<![\w/])(?:{'|'.join(re.escape(u) for u in _UNITS.split())})(?![\w/])")
_ROMAN_AFTER = re.compile(r"(?i:\b(?:type|stage|grade|class|phase|factor|group))\s+[IVX]+\b")
_NEGATION = re.compile(
    r"\b(?:no|not|cannot|without|never|none|neither|nor|nothing|nobody"
    r"|deny|denies|denied|denying|absence|absent|lack|lacks|lacking|lacked"
    r"|negative for|free of|rules? out|ruled out|fail(?:s|ed)? to|unable to)\b|n't\b",
    re.IGNORECASE,
)
_CASED_WORD = re.compile(r"\b[A-Za-z][A-Za-z0-9]*\b")
_ROMAN = re.compile(r"^[IVXLC]+$")
_STOP = frozenset(
    "the and for are was were with what which who whom whose how why when where this that these those from into "
    "onto about does did has have had can could should would will shall may might must its their them they you "
    "your our there here than then also such some any all each other more most less many much very being been "
    "is are be of to in on at by as an or if it".split()
)
RARE_FRACTION, RARE_MIN_DF = 0.0002, 2
DF_MAX_DOCS = 200_000
LONG_PERCENTILE = 90


def is_numeric(text: str) -> bool:
    return bool(_NUMERIC.search(text) or _UNIT.search(text) or _ROMAN_AFTER.search(text))


def is_negated(text: str) -> bool:
    return bool(_NEGATION.search(text.replace("’", "'")))


def has_abbreviation(text: str) -> bool:
    words = _CASED_WORD.findall(text)
    if len(words) >= 4 and not any(c.islower() for c in text):
        return False  # all capitals: case marks nothing
    for w in words:
        letters = [c for c in w if c.isalpha()]
        upper = sum(c.isupper() for c in letters)
        if 2 <= len(w) <= 10 and upper >= 2 and 2 * upper >= len(letters) and not _ROMAN.match(w):
            return True
    return False


def content_words(text: str) -> set[str]:
    """The words whose rarity is judged: lower-cased, >= 3 characters, holding a letter, not stop words."""
    return {w for w in WORD.findall(text.lower()) if len(w) >= 3 and w not in _STOP and not w.isdigit()}


def document_frequency(docs: Iterable[str], vocab: set[str]) -> Counter:
    """How many documents hold each word of ``vocab`` (only those words are counted: the query side's)."""
    df: Counter = Counter()
    for text in docs:
        df.update(vocab.intersection(WORD.findall(text.lower())))
    return df


def _corpus_sample(data: RetrievalDataset) -> list[str] | Iterable[str]:
    n = data.num_docs
    if n <= DF_MAX_DOCS:
        return data.doc_texts
    step = n / DF_MAX_DOCS  # evenly spaced: a lazily rendered corpus (synthetic) renders only these
    return (data.doc_texts[int(i * step)] for i in range(DF_MAX_DOCS))


def rare_threshold(num_docs: int) -> float:
    return max(RARE_MIN_DF, RARE_FRACTION * num_docs)


def query_tags(data: RetrievalDataset) -> dict[str, list[str]]:
    """qid -> the automatic tags it carries (sorted), for every query of ``data``."""
    words = [content_words(t) for t in data.query_texts]
    df = document_frequency(_corpus_sample(data), set().union(*words)) if words else Counter()
    limit = rare_threshold(min(data.num_docs, DF_MAX_DOCS))
    lengths = np.array([len(WORD.findall(t.lower())) for t in data.query_texts])
    long_limit = float(np.percentile(lengths, LONG_PERCENTILE)) if len(lengths) else 0.0
    tags: dict[str, list[str]] = {}
    for qid, text, ws, n in zip(data.query_ids, data.query_texts, words, lengths):
        rules = {
            "numeric": is_numeric(text),
            "negation": is_negated(text),
            "abbreviation": has_abbreviation(text),
            "rare_term": any(df[w] <= limit for w in ws),
            "long_query": n > long_limit,
        }
        tags[qid] = sorted(t for t, on in rules.items() if on)
    return tags


def slice_masks(qids: list[str], data: RetrievalDataset, tags: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Boolean masks aligned with ``qids``: "all", each automatic tag (possibly empty), and
    "category:<value>" for each query category present (a query without one is in no category slice)."""
    masks = {"all": np.ones(len(qids), dtype=bool)}
    for name in AUTO_SLICES:
        masks[name] = np.array([name in tags.get(q, ()) for q in qids], dtype=bool)
    cats = data.query_categories
    for value in sorted({cats[q] for q in qids if q in cats}):
        masks[f"category:{value}"] = np.array([cats.get(q) == value for q in qids], dtype=bool)
    return masks

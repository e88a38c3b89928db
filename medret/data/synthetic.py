"""Deterministic, streaming synthetic clinical notes with categorised queries and graded qrels.

Record i depends only on (seed, i), so any slice of a corpus of any size can be produced without
holding the rest. Queries are anchored on a record's ground-truth facts (so each has at least one
relevant record); qrels come from those facts, never from text overlap:
grade 2 when the query's condition is the record's primary problem, 1 when it is secondary.
"""

from __future__ import annotations

import random
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from medret.data.clinical_vocab import (
    AGE_GROUPS,
    CLINICS,
    CONDITIONS,
    COURSE,
    SEX_WORDS,
    Condition,
)
from medret.data.judgements import Judgements
from medret.errors import InputError

GENERATOR_VERSION = 1  # bump when the rendered text or facts change: it keys embedding caches
CATEGORIES = ("synonym", "condition_medication", "lab_threshold", "negation")
_BY_KEY = {c.key: c for c in CONDITIONS}
_LABS = {c.lab.name: c for c in CONDITIONS if c.lab is not None}


@dataclass
class RecordFacts:
    age: int
    sex: str
    primary: str
    secondary: tuple[str, ...]
    meds: dict[str, str]  # condition key -> generic name
    labs: dict[str, float]
    negated: tuple[str, ...]

    def grade(self, key: str) -> int:
        return 2 if key == self.primary else (1 if key in self.secondary else 0)


def record_id(i: int) -> str:
    return f"rec{i:07d}"


def _rng(seed: int, stream: int, i: int) -> random.Random:
    return random.Random((seed << 40) ^ (stream << 36) ^ i)


def _value(rng: random.Random, lo_hi: tuple[float, float], decimals: int) -> float:
    return round(rng.uniform(*lo_hi), decimals)


def record_facts(seed: int, i: int) -> RecordFacts:
    rng = _rng(seed, 1, i)
    sex = rng.choice(("female", "male"))
    age = rng.randint(18, 95)
    allowed = [c for c in CONDITIONS if c.sex in (None, sex)]
    chosen = rng.sample(allowed, 1 + rng.choice((1, 1, 2, 2, 3)))
    keys = [c.key for c in chosen]
    meds = {c.key: rng.choice(c.meds).generic for c in chosen}
    labs: dict[str, float] = {}
    for c in chosen:
        if c.lab is not None:
            labs[c.lab.name] = _value(rng, c.lab.abnormal, c.lab.decimals)
    others = [c for c in CONDITIONS if c.key not in keys and c.lab is not None]
    for c in rng.sample(others, 3):
        labs[c.lab.name] = _value(rng, c.lab.normal, c.lab.decimals)
    absent = [c.key for c in allowed if c.key not in keys]
    negated = tuple(rng.sample(absent, rng.choice((1, 2))))
    return RecordFacts(age, sex, keys[0], tuple(keys[1:]), meds, labs, negated)


def _fmt(v: float) -> str:
    return f"{v:g}"


def _med_text(rng: random.Random, c: Condition, generic: str) -> str:
    med = next(m for m in c.meds if m.generic == generic)
    name = rng.choice((med.generic, med.brand, f"{med.generic} ({med.brand})"))
    return f"{name} {rng.choice(med.doses)}"


def record_text(seed: int, i: int, f: RecordFacts) -> str:
    """Render facts as a note; surface forms are drawn independently of any query."""
    rng = _rng(seed, 2, i)
    prim = _BY_KEY[f.primary]
    form = lambda key: rng.choice(_BY_KEY[key].forms)  # noqa: E731
    lines = [
        f"{f.age}-year-old {rng.choice(SEX_WORDS[f.sex])} seen in {rng.choice(CLINICS)} clinic.",
        f"Chief complaint: {rng.choice(prim.symptoms)}.",
        f"HPI: known {form(f.primary)} for {rng.randint(1, 25)} years, currently {rng.choice(COURSE)}.",
    ]
    if f.secondary:
        lines.append("Past medical history: " + "; ".join(form(k) for k in f.secondary) + ".")
    else:
        lines.append("Past medical history: otherwise unremarkable.")
    lines.append("Medications: " + "; ".join(_med_text(rng, _BY_KEY[k], g) for k, g in f.meds.items()) + ".")
    labs = list(f.labs.items())
    rng.shuffle(labs)
    lines.append("Labs: " + ", ".join(f"{n} {_fmt(v)} {_LABS[n].lab.unit}".rstrip() for n, v in labs) + ".")
    neg = []
    for k in f.negated:
        c = _BY_KEY[k]
        neg.append(
            rng.choice((f"No history of {form(k)}", f"Denies {rng.choice(c.symptoms)}", f"Negative for {form(k)}"))
        )
    lines.append(". ".join(neg) + ".")
    lines.append(
        f"Assessment: {form(f.primary)}, {rng.choice(COURSE)}. Plan: continue current "
        f"regimen and follow up in {rng.choice((2, 4, 6, 12))} weeks."
    )
    return "\n".join(lines)


class SyntheticTexts(Sequence):
    """The corpus's note texts, rendered on demand: a 1M-record corpus never sits in memory."""

    def __init__(self, seed: int, num_records: int):
        self.seed, self.num_records = seed, num_records

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [record_text(self.seed, j, record_facts(self.seed, j)) for j in range(*i.indices(self.num_records))]
        if i < 0:
            i += self.num_records
        if not 0 <= i < self.num_records:
            raise IndexError(i)
        return record_text(self.seed, i, record_facts(self.seed, i))


class SyntheticIds(Sequence):
    """Record ids ``rec0000000``.. made on demand: no list of 1M strings in memory."""

    def __init__(self, num_records: int):
        self.num_records = num_records

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [record_id(j) for j in range(*i.indices(self.num_records))]
        if i < 0:
            i += self.num_records
        if not 0 <= i < self.num_records:
            raise IndexError(i)
        return record_id(i)


def iter_records(seed: int, num_records: int, start: int = 0) -> Iterator[tuple[str, str, RecordFacts]]:
    for i in range(start, num_records):
        facts = record_facts(seed, i)
        yield record_id(i), record_text(seed, i, facts), facts


@dataclass
class SyntheticQuery:
    qid: str
    text: str
    category: str
    condition: str
    test: tuple  # (kind, args...) evaluated against RecordFacts


def _age_group(age: int) -> str:
    return next(name for name, lo, hi in AGE_GROUPS if lo <= age <= hi)


def make_queries(seed: int, num_records: int, num_queries: int, split: str) -> list[SyntheticQuery]:
    rng = random.Random((seed << 20) ^ zlib.crc32(split.encode()))
    out: list[SyntheticQuery] = []
    seen: set[str] = set()  # a repeated query would count twice in every mean
    attempts = 0
    while len(out) < num_queries:
        attempts += 1
        if attempts > max(2000, 50 * num_queries):  # a small corpus offers few distinct queries
            raise InputError(
                f"data.num_queries={num_queries}: the synthetic generator found only {len(out)} distinct "
                f"queries over {num_records} records; lower data.num_queries or raise data.num_records"
            )
        j = len(out)
        cat = CATEGORIES[j % len(CATEGORIES)]
        anchor = record_facts(seed, rng.randrange(num_records))
        key = rng.choice((anchor.primary, *anchor.secondary))
        c = _BY_KEY[key]
        qf = rng.choice(c.forms)
        if cat == "synonym":
            grp = _age_group(anchor.age)
            text = f"{grp} {rng.choice(SEX_WORDS[anchor.sex][:2])} with {qf}"
            test = ("demo", anchor.sex, grp)
        elif cat == "condition_medication":
            med = next(m for m in c.meds if m.generic == anchor.meds[key])
            text = f"{qf} treated with {rng.choice((med.generic, med.brand))}"
            test = ("med", med.generic)
        elif cat == "lab_threshold":
            if c.lab is None:
                continue
            v = anchor.labs[c.lab.name]
            lo, hi = sorted((v, c.lab.normal[1] if c.lab.direction == "above" else c.lab.normal[0]))
            thr = round(rng.uniform(lo, hi), c.lab.decimals)
            text = f"{qf} with {c.lab.name} {c.lab.direction} {_fmt(thr)} {c.lab.unit}".rstrip()
            test = ("lab", c.lab.name, c.lab.direction, thr)
        else:
            absent = [k for k in _BY_KEY if k != key and _BY_KEY[k].sex in (None, anchor.sex) and anchor.grade(k) == 0]
            other = rng.choice(absent)
            text = rng.choice(
                (f"{qf} without {rng.choice(_BY_KEY[other].forms)}", f"{qf} but no {rng.choice(_BY_KEY[other].forms)}")
            )
            test = ("not", other)
        if text in seen:
            continue
        seen.add(text)
        out.append(SyntheticQuery(f"q{j:05d}", text, cat, key, test))
    return out


def _passes(f: RecordFacts, test: tuple) -> bool:
    kind = test[0]
    if kind == "demo":
        return f.sex == test[1] and _age_group(f.age) == test[2]
    if kind == "med":
        return test[1] in f.meds.values()
    if kind == "lab":
        v = f.labs.get(test[1])
        return v is not None and (v > test[3] if test[2] == "above" else v < test[3])
    return f.grade(test[1]) == 0  # "not"


def judge(queries: list[SyntheticQuery], facts: Iterator[RecordFacts], doc_ids: Sequence[str]) -> Judgements:
    """Graded qrels from ground truth in one streaming pass over the records' facts (record i = doc_ids[i])."""
    by_cond: dict[str, list[int]] = {}
    for r, q in enumerate(queries):
        by_cond.setdefault(q.condition, []).append(r)
    # per query typed arrays, 5 bytes a judgement (~13M of them at 1M records), records in increasing order
    docs, grades = [array("i") for _ in queries], [array("b") for _ in queries]
    for i, f in enumerate(facts):
        for key in (f.primary, *f.secondary):
            g = f.grade(key)
            for r in by_cond.get(key, ()):
                if _passes(f, queries[r].test):
                    docs[r].append(i)
                    grades[r].append(g)
    return Judgements.from_parts([q.qid for q in queries], docs, grades, doc_ids)

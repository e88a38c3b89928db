"""Vocabulary of the synthetic clinical record generator.

Each condition has several surface forms (formal name, abbreviation, lay term) so that a query
and a relevant note rarely share the same words; medications carry generic and brand names;
a condition may own one lab whose value is abnormal exactly when the condition is present.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lab:
    name: str
    unit: str
    normal: tuple[float, float]
    abnormal: tuple[float, float]
    decimals: int
    direction: str  # "above" or "below": which side of normal the disease pushes


@dataclass(frozen=True)
class Medication:
    generic: str
    brand: str
    doses: tuple[str, ...]


@dataclass(frozen=True)
class Condition:
    key: str
    forms: tuple[str, ...]  # formal, abbreviation, lay
    symptoms: tuple[str, ...]
    meds: tuple[Medication, ...]
    lab: Lab | None = None
    sex: str | None = None  # only this sex has it


def _m(generic: str, brand: str, *doses: str) -> Medication:
    return Medication(generic, brand, doses)


CONDITIONS: tuple[Condition, ...] = (
    Condition(
        "t2dm",
        ("type 2 diabetes mellitus", "T2DM", "sugar diabetes"),
        ("polyuria and fatigue", "increased thirst"),
        (
            _m("metformin", "Glucophage", "500 mg twice daily", "1000 mg twice daily"),
            _m("empagliflozin", "Jardiance", "10 mg daily", "25 mg daily"),
            _m("sitagliptin", "Januvia", "100 mg daily"),
        ),
        Lab("HbA1c", "%", (4.8, 5.6), (7.0, 11.5), 1, "above"),
    ),
    Condition(
        "htn",
        ("essential hypertension", "HTN", "high blood pressure"),
        ("headaches", "elevated home BP readings"),
        (
            _m("lisinopril", "Zestril", "10 mg daily", "20 mg daily", "40 mg daily"),
            _m("amlodipine", "Norvasc", "5 mg daily", "10 mg daily"),
            _m("hydrochlorothiazide", "Microzide", "25 mg daily"),
        ),
    ),
    Condition(
        "hld",
        ("hyperlipidemia", "HLD", "high cholesterol"),
        ("abnormal screening lipids",),
        (_m("atorvastatin", "Lipitor", "20 mg nightly", "40 mg nightly"), _m("rosuvastatin", "Crestor", "10 mg daily")),
        Lab("LDL", "mg/dL", (60, 99), (160, 240), 0, "above"),
    ),
    Condition(
        "ckd",
        ("chronic kidney disease", "CKD", "weak kidneys"),
        ("leg swelling", "foamy urine"),
        (
            _m("losartan", "Cozaar", "50 mg daily", "100 mg daily"),
            _m("sodium bicarbonate", "Neut", "650 mg twice daily"),
        ),
        Lab("eGFR", "mL/min/1.73m2", (90, 120), (15, 55), 0, "below"),
    ),
    Condition(
        "chf",
        ("congestive heart failure", "CHF", "weak heart"),
        ("shortness of breath on exertion", "orthopnea"),
        (
            _m("furosemide", "Lasix", "40 mg daily", "40 mg twice daily"),
            _m("carvedilol", "Coreg", "12.5 mg twice daily"),
            _m("sacubitril-valsartan", "Entresto", "49/51 mg twice daily"),
        ),
        Lab("BNP", "pg/mL", (10, 90), (400, 2500), 0, "above"),
    ),
    Condition(
        "afib",
        ("atrial fibrillation", "AFib", "irregular heartbeat"),
        ("palpitations", "lightheadedness"),
        (
            _m("apixaban", "Eliquis", "5 mg twice daily"),
            _m("warfarin", "Coumadin", "5 mg daily"),
            _m("metoprolol", "Lopressor", "25 mg twice daily"),
        ),
        Lab("INR", "", (0.9, 1.1), (2.0, 3.5), 1, "above"),
    ),
    Condition(
        "copd",
        ("chronic obstructive pulmonary disease", "COPD", "smoker's lung"),
        ("chronic productive cough", "wheezing"),
        (
            _m("tiotropium", "Spiriva", "18 mcg inhaled daily"),
            _m("fluticasone-salmeterol", "Advair", "250/50 one puff twice daily"),
        ),
    ),
    Condition(
        "asthma",
        ("bronchial asthma", "reactive airway disease", "wheezy chest"),
        ("nighttime cough", "chest tightness"),
        (
            _m("albuterol", "Ventolin", "2 puffs as needed"),
            _m("montelukast", "Singulair", "10 mg nightly"),
            _m("budesonide", "Pulmicort", "180 mcg twice daily"),
        ),
    ),
    Condition(
        "hypothyroid",
        ("hypothyroidism", "hypoT", "underactive thyroid"),
        ("cold intolerance", "weight gain"),
        (_m("levothyroxine", "Synthroid", "50 mcg daily", "100 mcg daily"),),
        Lab("TSH", "mIU/L", (0.5, 4.0), (6.0, 25.0), 1, "above"),
    ),
    Condition(
        "ida",
        ("iron deficiency anemia", "IDA", "low blood count"),
        ("fatigue", "exertional dyspnea"),
        (_m("ferrous sulfate", "Feosol", "325 mg daily"),),
        Lab("hemoglobin", "g/dL", (13.0, 16.5), (7.0, 10.5), 1, "below"),
    ),
    Condition(
        "gerd",
        ("gastroesophageal reflux disease", "GERD", "acid reflux"),
        ("heartburn after meals", "regurgitation"),
        (
            _m("omeprazole", "Prilosec", "20 mg daily"),
            _m("pantoprazole", "Protonix", "40 mg daily"),
            _m("famotidine", "Pepcid", "20 mg twice daily"),
        ),
    ),
    Condition(
        "mdd",
        ("major depressive disorder", "MDD", "depression"),
        ("low mood", "poor sleep and anhedonia"),
        (_m("sertraline", "Zoloft", "50 mg daily", "100 mg daily"), _m("bupropion", "Wellbutrin", "150 mg daily")),
    ),
    Condition(
        "gad",
        ("generalized anxiety disorder", "GAD", "bad nerves"),
        ("constant worry", "restlessness"),
        (_m("buspirone", "Buspar", "10 mg twice daily"), _m("escitalopram", "Lexapro", "10 mg daily")),
    ),
    Condition(
        "oa",
        ("osteoarthritis", "OA", "wear-and-tear arthritis"),
        ("knee pain", "morning stiffness under 30 minutes"),
        (_m("acetaminophen", "Tylenol", "650 mg every 6 hours as needed"), _m("meloxicam", "Mobic", "15 mg daily")),
    ),
    Condition(
        "ra",
        ("rheumatoid arthritis", "RA", "inflammatory joint disease"),
        ("swollen hand joints", "prolonged morning stiffness"),
        (_m("methotrexate", "Trexall", "15 mg weekly"), _m("adalimumab", "Humira", "40 mg every other week")),
        Lab("CRP", "mg/L", (0.5, 5.0), (15.0, 80.0), 1, "above"),
    ),
    Condition(
        "gout",
        ("gout", "gouty arthritis", "uric acid attacks"),
        ("painful swollen big toe",),
        (_m("allopurinol", "Zyloprim", "300 mg daily"), _m("colchicine", "Colcrys", "0.6 mg daily")),
        Lab("uric acid", "mg/dL", (3.5, 7.0), (8.5, 12.0), 1, "above"),
    ),
    Condition(
        "cad",
        ("coronary artery disease", "CAD", "blocked heart arteries"),
        ("exertional chest pressure", "angina"),
        (
            _m("aspirin", "Bayer", "81 mg daily"),
            _m("clopidogrel", "Plavix", "75 mg daily"),
            _m("nitroglycerin", "Nitrostat", "0.4 mg sublingual as needed"),
        ),
    ),
    Condition(
        "cva",
        ("history of ischemic stroke", "CVA", "brain attack"),
        ("residual left-sided weakness", "slurred speech"),
        (_m("clopidogrel", "Plavix", "75 mg daily"), _m("atorvastatin", "Lipitor", "80 mg nightly")),
    ),
    Condition(
        "osteoporosis",
        ("osteoporosis", "low bone density", "thin bones"),
        ("back pain after a minor fall",),
        (_m("alendronate", "Fosamax", "70 mg weekly"),),
        Lab("vitamin D", "ng/mL", (30, 60), (8, 19), 0, "below"),
    ),
    Condition(
        "nafld",
        ("nonalcoholic fatty liver disease", "NAFLD", "fatty liver"),
        ("right upper quadrant discomfort",),
        (_m("pioglitazone", "Actos", "15 mg daily"),),
        Lab("ALT", "U/L", (10, 35), (70, 200), 0, "above"),
    ),
    Condition(
        "epilepsy",
        ("epilepsy", "seizure disorder", "fits"),
        ("breakthrough seizure", "episodes of staring"),
        (_m("levetiracetam", "Keppra", "500 mg twice daily"), _m("lamotrigine", "Lamictal", "100 mg twice daily")),
    ),
    Condition(
        "migraine",
        ("migraine", "migraine headache", "sick headaches"),
        ("throbbing unilateral headache with photophobia",),
        (_m("sumatriptan", "Imitrex", "50 mg as needed"), _m("topiramate", "Topamax", "25 mg twice daily")),
    ),
    Condition(
        "bph",
        ("benign prostatic hyperplasia", "BPH", "enlarged prostate"),
        ("nocturia", "weak urinary stream"),
        (_m("tamsulosin", "Flomax", "0.4 mg nightly"), _m("finasteride", "Proscar", "5 mg daily")),
        Lab("PSA", "ng/mL", (0.5, 3.5), (4.5, 12.0), 1, "above"),
        sex="male",
    ),
    Condition(
        "dvt",
        ("deep vein thrombosis", "DVT", "blood clot in the leg"),
        ("unilateral calf swelling",),
        (_m("rivaroxaban", "Xarelto", "20 mg daily"), _m("enoxaparin", "Lovenox", "80 mg twice daily")),
        Lab("D-dimer", "ng/mL", (100, 450), (800, 4000), 0, "above"),
    ),
    Condition(
        "cap",
        ("community-acquired pneumonia", "CAP", "chest infection"),
        ("fever and productive cough",),
        (_m("azithromycin", "Zithromax", "250 mg daily"), _m("ceftriaxone", "Rocephin", "1 g IV daily")),
        Lab("WBC", "K/uL", (4.5, 10.0), (13.0, 24.0), 1, "above"),
    ),
    Condition(
        "uti",
        ("urinary tract infection", "UTI", "bladder infection"),
        ("dysuria and urinary frequency",),
        (_m("nitrofurantoin", "Macrobid", "100 mg twice daily"), _m("ciprofloxacin", "Cipro", "500 mg twice daily")),
    ),
    Condition(
        "osa",
        ("obstructive sleep apnea", "OSA", "sleep apnea"),
        ("loud snoring and daytime sleepiness",),
        (_m("modafinil", "Provigil", "100 mg every morning"),),
    ),
    Condition(
        "psoriasis",
        ("plaque psoriasis", "psoriasis vulgaris", "scaly skin patches"),
        ("itchy plaques on elbows",),
        (_m("clobetasol", "Temovate", "0.05% cream twice daily"), _m("ustekinumab", "Stelara", "45 mg every 12 weeks")),
    ),
)

AGE_GROUPS: tuple[tuple[str, int, int], ...] = (
    ("young adult", 18, 39),
    ("middle-aged", 40, 64),
    ("elderly", 65, 95),
)
SEX_WORDS = {"female": ("woman", "female", "lady"), "male": ("man", "male", "gentleman")}
CLINICS = (
    "primary care",
    "internal medicine",
    "cardiology",
    "endocrinology",
    "urgent care",
    "geriatrics",
    "pulmonology",
    "nephrology",
)
COURSE = ("stable", "improving", "suboptimally controlled", "worsening", "well controlled")

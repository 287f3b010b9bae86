"""A small medical knowledge base and the text it generates, all deterministic given a seed.

Each condition has symptoms, one diagnostic test, one drug (with a dose) and one piece of advice.
They become *facts* (``fact_id = "<condition>.<attribute>"``) that a model can learn from text and be
quizzed on later:

* :func:`facts` - the (condition -> attribute -> value) table as rows;
* :func:`qa_pairs` - one question / short answer / long written answer per fact;
* :func:`consultation` - a multi-turn patient-doctor consultation about one condition
  (the stage-1 text corpus), whose patient turns later get synthesised as speech;
* :func:`patient_utterance` - one patient sentence with planted entities and sentiment.

The facts are synthetic teaching material, not medical advice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Condition:
    id: str
    name: str
    symptoms: tuple[str, ...]
    test: str
    drug: str
    dose: str
    advice: str
    body_part: str


CONDITIONS: tuple[Condition, ...] = (
    Condition(
        "migraine",
        "migraine",
        ("throbbing headache", "nausea", "sensitivity to light"),
        "neurological examination",
        "sumatriptan",
        "50 milligrams at onset",
        "rest in a dark quiet room",
        "head",
    ),
    Condition(
        "asthma",
        "asthma",
        ("wheezing", "shortness of breath", "chest tightness"),
        "spirometry",
        "salbutamol inhaler",
        "two puffs as needed",
        "avoid smoke and known triggers",
        "chest",
    ),
    Condition(
        "gerd",
        "acid reflux",
        ("heartburn", "sour taste in the mouth", "chest burning after meals"),
        "upper endoscopy",
        "omeprazole",
        "20 milligrams before breakfast",
        "avoid eating late at night",
        "stomach",
    ),
    Condition(
        "uti",
        "urinary tract infection",
        ("burning when urinating", "frequent urination", "lower belly pain"),
        "urine culture",
        "nitrofurantoin",
        "100 milligrams twice a day",
        "drink plenty of water",
        "bladder",
    ),
    Condition(
        "hypertension",
        "high blood pressure",
        ("morning headaches", "dizziness", "blurred vision"),
        "blood pressure monitoring",
        "amlodipine",
        "5 milligrams once a day",
        "cut down on salt",
        "heart",
    ),
    Condition(
        "diabetes",
        "type 2 diabetes",
        ("excessive thirst", "frequent urination", "tiredness"),
        "HbA1c blood test",
        "metformin",
        "500 milligrams twice a day with meals",
        "walk for thirty minutes every day",
        "pancreas",
    ),
    Condition(
        "pneumonia",
        "pneumonia",
        ("fever", "productive cough", "sharp chest pain when breathing"),
        "chest X-ray",
        "amoxicillin",
        "500 milligrams three times a day",
        "rest and keep drinking fluids",
        "lungs",
    ),
    Condition(
        "anemia",
        "iron deficiency anemia",
        ("tiredness", "pale skin", "shortness of breath on stairs"),
        "full blood count",
        "ferrous sulfate",
        "200 milligrams once a day",
        "eat iron-rich foods like lentils and spinach",
        "blood",
    ),
    Condition(
        "hypothyroidism",
        "an underactive thyroid",
        ("weight gain", "feeling cold", "dry skin"),
        "TSH blood test",
        "levothyroxine",
        "50 micrograms every morning",
        "take the tablet on an empty stomach",
        "neck",
    ),
    Condition(
        "gout",
        "gout",
        ("sudden joint pain", "swollen big toe", "red hot joint"),
        "uric acid blood test",
        "colchicine",
        "500 micrograms twice a day",
        "avoid alcohol and red meat",
        "foot",
    ),
    Condition(
        "sinusitis",
        "sinusitis",
        ("blocked nose", "facial pain", "thick nasal discharge"),
        "nasal examination",
        "saline nasal spray",
        "two sprays in each nostril twice a day",
        "breathe steam from a bowl of hot water",
        "sinuses",
    ),
    Condition(
        "eczema",
        "eczema",
        ("itchy skin", "dry patches", "red rash"),
        "skin examination",
        "hydrocortisone cream",
        "a thin layer twice a day",
        "use fragrance-free moisturiser",
        "skin",
    ),
    Condition(
        "angina",
        "angina",
        ("chest pressure on exertion", "pain spreading to the left arm", "breathlessness"),
        "exercise ECG",
        "glyceryl trinitrate spray",
        "one spray under the tongue",
        "stop and rest when the pain starts",
        "heart",
    ),
    Condition(
        "kidney_stones",
        "kidney stones",
        ("severe flank pain", "blood in the urine", "pain coming in waves"),
        "CT of the kidneys",
        "diclofenac",
        "75 milligrams as a single injection",
        "drink at least three litres of water a day",
        "kidney",
    ),
    Condition(
        "gastroenteritis",
        "gastroenteritis",
        ("diarrhoea", "vomiting", "stomach cramps"),
        "stool sample test",
        "oral rehydration salts",
        "one sachet after each loose stool",
        "sip fluids often",
        "stomach",
    ),
    Condition(
        "conjunctivitis",
        "conjunctivitis",
        ("red eye", "sticky discharge", "gritty feeling in the eye"),
        "eye examination",
        "chloramphenicol eye drops",
        "one drop every two hours",
        "do not share towels",
        "eye",
    ),
    Condition(
        "sciatica",
        "sciatica",
        ("shooting leg pain", "lower back pain", "numbness in the foot"),
        "MRI of the spine",
        "naproxen",
        "250 milligrams twice a day",
        "keep gently active",
        "back",
    ),
    Condition(
        "insomnia",
        "insomnia",
        ("trouble falling asleep", "waking at night", "daytime tiredness"),
        "sleep diary",
        "melatonin",
        "2 milligrams before bed",
        "avoid screens an hour before bed",
        "head",
    ),
    Condition(
        "otitis",
        "a middle ear infection",
        ("ear pain", "muffled hearing", "fever"),
        "otoscopy",
        "amoxicillin",
        "500 milligrams three times a day",
        "keep the ear dry",
        "ear",
    ),
    Condition(
        "tonsillitis",
        "tonsillitis",
        ("sore throat", "painful swallowing", "swollen glands"),
        "throat swab",
        "penicillin V",
        "500 milligrams four times a day",
        "gargle with warm salt water",
        "throat",
    ),
)


# An *invented* knowledge base (``MakeDataConfig.knowledge = "invented"``): fictional conditions, drugs,
# tests, doses and advice that no pretrained model can know, so that knowledge injection is measurable
# (a base model scores ~0 on it). Condition names, symptoms and advice are ordinary English words, so they
# can be spoken and heard; the drug and test names are made up. Ids start with ``inv_``.
INVENTED: tuple[Condition, ...] = tuple(
    Condition(*row)
    for row in (
        (
            "inv_silver_lung",
            "silver lung",
            ("a metallic taste", "a dry evening cough", "tingling in the ribs"),
            "Halden breath scan",
            "velotrexin",
            "35 milligrams every other day",
            "sleep with the window slightly open",
            "chest",
        ),
        (
            "inv_amber_fever",
            "amber fever",
            ("yellow fingertips", "night sweats", "a bitter taste"),
            "Corvan blood panel",
            "norbasil",
            "12 milligrams at noon",
            "avoid citrus fruit for a week",
            "blood",
        ),
        (
            "inv_harbor_knee",
            "harbor knee",
            ("clicking knees", "stiff ankles", "cold feet"),
            "Tressler joint echo",
            "quentamide",
            "40 milligrams after dinner",
            "walk barefoot on sand",
            "knee",
        ),
        (
            "inv_winter_rash",
            "winter rash",
            ("blue patches on the arms", "burning palms", "flaky elbows"),
            "Morrow skin print",
            "dravolin cream",
            "a pea-sized amount every evening",
            "wear cotton gloves at night",
            "skin",
        ),
        (
            "inv_glass_throat",
            "glass throat",
            ("a squeaky voice", "throat clicking", "dry swallowing"),
            "Pellor throat swab",
            "tesmarin lozenges",
            "one lozenge every four hours",
            "hum quietly for ten minutes a day",
            "throat",
        ),
        (
            "inv_copper_gut",
            "copper gut",
            ("green stools", "belly humming", "hunger at night"),
            "Ansel stool stain",
            "kalvorex",
            "250 milligrams before sleep",
            "eat plain rice for two days",
            "stomach",
        ),
        (
            "inv_paper_bone",
            "paper bone",
            ("aching wrists", "soft nails", "tender shins"),
            "Brenner density test",
            "miltrazone",
            "8 milligrams every Monday",
            "carry nothing heavier than a kettle",
            "bones",
        ),
        (
            "inv_river_ear",
            "river ear",
            ("rushing sounds", "itchy ear canals", "tilting when standing"),
            "Dunmore tone test",
            "oberacet drops",
            "three drops at sunrise",
            "keep your head still after meals",
            "ear",
        ),
        (
            "inv_ember_eye",
            "ember eye",
            ("orange halos around lights", "warm eyelids", "flickering vision"),
            "Caskey lamp exam",
            "pexilane drops",
            "two drops every six hours",
            "wear a wide-brimmed hat outdoors",
            "eye",
        ),
        (
            "inv_hollow_heart",
            "hollow heart",
            ("a fluttering chest", "cold hands", "yawning spells"),
            "Varga rhythm strip",
            "ravutin",
            "15 milligrams twice a week",
            "count your pulse each morning",
            "heart",
        ),
        (
            "inv_salt_kidney",
            "salt kidney",
            ("salty sweat", "puffy ankles", "pale urine"),
            "Lindqvist urine assay",
            "sorbenac",
            "60 milligrams with breakfast",
            "drink warm water only",
            "kidney",
        ),
        (
            "inv_thistle_cough",
            "thistle cough",
            ("a barking cough at dawn", "scratchy ribs", "hoarse mornings"),
            "Okafor sputum card",
            "belcoran syrup",
            "ten millilitres at bedtime",
            "breathe through a damp cloth",
            "lungs",
        ),
        (
            "inv_velvet_nerve",
            "velvet nerve",
            ("numb earlobes", "buzzing fingers", "heavy eyelids"),
            "Strand nerve sweep",
            "fenolide",
            "5 milligrams every eight hours",
            "avoid wool clothing",
            "nerves",
        ),
        (
            "inv_marble_liver",
            "marble liver",
            ("a grey tongue", "itchy shins", "sugar cravings"),
            "Petrov stripe test",
            "hepazin",
            "100 milligrams on waking",
            "skip fried food on weekdays",
            "liver",
        ),
        (
            "inv_lantern_head",
            "lantern head",
            ("a glowing headache", "ringing at dusk", "heavy temples"),
            "Quill pressure map",
            "cephadrol",
            "20 milligrams when it starts",
            "sit upright in dim light",
            "head",
        ),
        (
            "inv_pebble_bladder",
            "pebble bladder",
            ("rattling pain when walking", "cloudy urine", "urgency at night"),
            "Renwick bladder echo",
            "urolant",
            "two capsules at dusk",
            "avoid fizzy drinks",
            "bladder",
        ),
        (
            "inv_ash_sinus",
            "ash sinus",
            ("a smoky smell", "grey mucus", "cheek pressure"),
            "Marlow light test",
            "nasotrin spray",
            "one spray in each nostril at noon",
            "rinse the nose with cool tea",
            "sinuses",
        ),
        (
            "inv_frost_foot",
            "frost foot",
            ("white toes", "aching heels", "numb soles"),
            "Eckert warmth scan",
            "podraxin gel",
            "a thin strip on each heel",
            "soak the feet in warm milk",
            "foot",
        ),
        (
            "inv_tidal_back",
            "tidal back",
            ("rolling back pain", "stiff hips", "pins in the spine"),
            "Holloway spine sweep",
            "dorsamil",
            "30 milligrams every third day",
            "sleep on a firm floor mat",
            "back",
        ),
        (
            "inv_cinder_skin",
            "cinder skin",
            ("itchy dark freckles", "dry knuckles", "burning shoulders"),
            "Fairbairn skin lamp",
            "cutivex ointment",
            "a thin film at midday",
            "avoid hot showers",
            "skin",
        ),
    )
)

KNOWLEDGE: dict[str, tuple[Condition, ...]] = {"standard": CONDITIONS, "invented": INVENTED}
ALL_CONDITIONS: tuple[Condition, ...] = CONDITIONS + INVENTED

ATTRIBUTES = ("symptoms", "test", "drug", "advice")
DURATIONS = ("two days", "three days", "a week", "two weeks", "a month", "one day")

QUESTIONS = {
    "symptoms": ("What are the typical symptoms of {name}?", "How do I know if I have {name}?"),
    "test": ("Which test confirms {name}?", "How is {name} diagnosed?"),
    "drug": ("What medicine is used for {name}?", "What is the usual treatment for {name}?"),
    "advice": ("What can I do myself about {name}?", "Any advice for living with {name}?"),
}

NEGATIVE_PHRASES = ("I'm really worried.", "It's awful and I'm scared.", "I feel terrible.")
POSITIVE_PHRASES = (
    "It's getting a bit better, thankfully.",
    "Thanks, I feel relieved.",
    "Good news is it's improving.",
)


def condition(cid: str) -> Condition:
    for c in ALL_CONDITIONS:
        if c.id == cid:
            return c
    raise KeyError(f"unknown condition {cid!r}")


def _join(items: tuple[str, ...] | list[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def fact_value(c: Condition, attribute: str) -> str:
    return {"symptoms": _join(c.symptoms), "test": c.test, "drug": f"{c.drug}, {c.dose}", "advice": c.advice}[
        attribute
    ]


def facts(conditions: tuple[Condition, ...] = CONDITIONS) -> list[dict]:
    """Every fact: ``{fact_id, condition, attribute, value}``."""
    return [
        {"fact_id": f"{c.id}.{a}", "condition": c.id, "attribute": a, "value": fact_value(c, a)}
        for c in conditions
        for a in ATTRIBUTES
    ]


def fact_key(fact_id: str) -> str:
    """The phrase an answer must state to state fact ``fact_id``: the drug, the test, the advice, or the first
    symptom (what :func:`short_answer` leads with)."""
    cid, attribute = fact_id.rsplit(".", 1)
    c = condition(cid)
    return {"symptoms": c.symptoms[0], "test": c.test, "drug": c.drug, "advice": c.advice}[attribute]


def short_answer(c: Condition, attribute: str) -> str:
    return {
        "symptoms": f"{c.name.capitalize()} usually causes {_join(c.symptoms)}.",
        "test": f"{c.name.capitalize()} is confirmed with a {c.test}.",
        "drug": f"{c.name.capitalize()} is usually treated with {c.drug}, {c.dose}.",
        "advice": f"With {c.name}, {c.advice}.",
    }[attribute]


def long_answer(c: Condition, attribute: str, reference_only: bool = False) -> str:
    """A written-style, long answer (the input of the rewrite-to-spoken step).

    ``reference_only`` answers only point at a table, which the spoken-style filter rejects.
    """
    if reference_only:
        return (
            f"| Condition | {attribute.capitalize()} |\n|---|---|\n"
            f"| {c.name} | {fact_value(c, attribute)} |\n"
            f"(Source: guideline table {len(c.name)}.{len(attribute)}, see https://example.org/guidelines)"
        )
    core = short_answer(c, attribute)
    return (
        f"Thank you for your question. {core} "
        f"Please note (see the table below) that every case differs; according to current guidelines, "
        f"the {attribute} listed here reflect the most common presentation of {c.name} affecting the "
        f"{c.body_part}. | Item | Detail | |---|---| | {attribute} | {fact_value(c, attribute)} | "
        f"If symptoms persist or worsen, consult your physician, who may adjust the plan accordingly."
    )


def qa_pairs(
    seed: int = 0,
    reference_share: float = 0.1,
    conditions: tuple[Condition, ...] = CONDITIONS,
    forms: int = 1,
) -> list[dict]:
    """``forms`` QAs per fact (1: one question form drawn at random; 2: every form of :data:`QUESTIONS`):
    ``{fact_id, condition, attribute, question, answer, long_answer}``.

    About ``reference_share`` of the long answers are table-only references (not speakable).
    """
    rng = random.Random(seed)
    out = []
    for c in conditions:
        for a in ATTRIBUTES:
            qs = rng.sample(QUESTIONS[a], k=forms) if forms > 1 else [rng.choice(QUESTIONS[a])]
            for q in qs:
                out.append(
                    {
                        "fact_id": f"{c.id}.{a}",
                        "condition": c.id,
                        "attribute": a,
                        "question": q.format(name=c.name),
                        "answer": short_answer(c, a),
                        "long_answer": long_answer(c, a, reference_only=rng.random() < reference_share),
                    }
                )
    return out


def consultation(c: Condition, rng: random.Random) -> list[dict]:
    """A multi-turn consultation about ``c``: text turns ``{role, text}`` (patient = user)."""
    symptoms = rng.sample(c.symptoms, k=rng.randint(2, len(c.symptoms)))
    duration = rng.choice(DURATIONS)
    opener = rng.choice(
        ("Hello doctor, I've had {s}.", "Hi, I keep getting {s}.", "Doctor, I'm suffering from {s}.")
    )
    turns = [
        {"role": "user", "text": opener.format(s=_join(symptoms))},
        {
            "role": "assistant",
            "text": rng.choice(("How long has this been going on?", "Since when have you noticed this?")),
        },
        {"role": "user", "text": f"For about {duration}. {rng.choice(NEGATIVE_PHRASES)}"},
        {
            "role": "assistant",
            "text": f"These symptoms suggest {c.name}. I'd like to arrange a {c.test} to confirm it.",
        },
        {
            "role": "user",
            "text": rng.choice(
                ("What treatment will I need?", "Is there a medicine for it?", "How is it treated?")
            ),
        },
        {"role": "assistant", "text": f"The usual treatment is {c.drug}, {c.dose}. Also, {c.advice}."},
    ]
    return turns


def patient_utterance(c: Condition, rng: random.Random) -> dict:
    """One patient sentence ``{text, sentiment}``; entities are found by the annotator."""
    sentiment = rng.choice(("negative", "neutral", "positive"))
    symptom = rng.choice(c.symptoms)
    duration = rng.choice(DURATIONS)
    base = rng.choice(
        (
            f"I have had {symptom} for {duration}.",
            f"The doctor said it might be {c.name} and wants a {c.test}.",
            f"I started taking {c.drug} for the {symptom}.",
            f"My {c.body_part} has been bothering me with {symptom} for {duration}.",
        )
    )
    tail = {
        "negative": rng.choice(NEGATIVE_PHRASES),
        "positive": rng.choice(POSITIVE_PHRASES),
        "neutral": "",
    }[sentiment]
    return {"text": f"{base} {tail}".strip(), "sentiment": sentiment}


def lexicon() -> dict[str, str]:
    """Surface form -> entity label, for the rule-based annotator (longest forms first)."""
    lex: dict[str, str] = {}
    for c in ALL_CONDITIONS:
        lex[c.name] = "CONDITION"
        for s in c.symptoms:
            lex[s] = "SYMPTOM"
        lex[c.test] = "TEST"
        lex[c.drug] = "DRUG"
        lex[c.dose] = "DOSAGE"
        lex[c.body_part] = "BODY_PART"
    for d in DURATIONS:
        lex[d] = "DURATION"
    return dict(sorted(lex.items(), key=lambda kv: -len(kv[0])))

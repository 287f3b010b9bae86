"""Many distinct spoken-style medical sentences over a broad vocabulary, with their entities planted.

Speech alignment needs words: a model whose adapter only ever heard the knowledge base's twenty conditions
in a handful of templates learns to pick one of those conditions, not to pass what was said on to the LLM
(BENCHMARKS.md, "Longer stage 2"). :func:`sentence` draws one patient or doctor sentence (statements and
questions, many templates) from a general medical vocabulary of a few hundred conditions, symptoms, drugs,
tests and body parts, plus the knowledge base's own terms; every slot it fills is an entity span, so the
rows are labelled for NER for free. ``make_data`` speaks them as the ``sentences`` dataset (kind
``utterance``: ASR / NER / sentiment tasks like ``utterances``).

None of the templates is one of the knowledge base's question templates (:data:`kb.QUESTIONS`): the
held-out evaluation questions are never heard, only their words may be. The vocabulary is teaching
material for transcription, not medical advice.
"""

from __future__ import annotations

import functools
import random

from medlm.data import kb

CONDITIONS = (
    "the flu", "a common cold", "bronchitis", "tuberculosis", "covid", "chickenpox", "shingles", "measles",
    "mumps", "whooping cough", "strep throat", "laryngitis", "tinnitus", "vertigo", "glaucoma", "cataracts",
    "macular degeneration", "dry eye", "a stye", "psoriasis", "acne", "rosacea", "hives", "ringworm",
    "athlete's foot", "cellulitis", "impetigo", "scabies", "head lice", "arthritis", "osteoarthritis",
    "rheumatoid arthritis", "osteoporosis", "a slipped disc", "carpal tunnel syndrome", "tendonitis",
    "bursitis", "plantar fasciitis", "a sprained ankle", "a broken wrist", "fibromyalgia", "lupus",
    "multiple sclerosis", "parkinson's disease", "epilepsy", "a stroke", "dementia", "alzheimer's disease",
    "depression", "anxiety", "panic attacks", "bipolar disorder", "an eating disorder", "sleep apnoea",
    "narcolepsy", "restless legs", "heart failure", "atrial fibrillation", "a heart attack", "high cholesterol",
    "low blood pressure", "varicose veins", "deep vein thrombosis", "a pulmonary embolism", "copd",
    "emphysema", "cystic fibrosis", "hay fever", "a peanut allergy", "irritable bowel syndrome",
    "crohn's disease", "ulcerative colitis", "coeliac disease", "gallstones", "appendicitis", "a hernia",
    "haemorrhoids", "constipation", "a stomach ulcer", "hepatitis", "fatty liver disease", "pancreatitis",
    "kidney disease", "a bladder infection", "an enlarged prostate", "endometriosis", "polycystic ovaries",
    "menopause", "thrush", "type 1 diabetes", "an overactive thyroid", "obesity", "malnutrition",
    "vitamin d deficiency", "lyme disease", "malaria", "food poisoning", "dehydration", "heat stroke",
    "frostbite", "a concussion", "whiplash", "a panic disorder", "chronic fatigue", "a cluster headache",
    "tension headaches", "trigeminal neuralgia", "bell's palsy", "a tooth abscess", "gum disease",
    "mouth ulcers", "a nosebleed", "an ear wax blockage", "croup", "hand foot and mouth disease",
)
SYMPTOMS = (
    "a fever", "chills", "night sweats", "a runny nose", "a stuffy nose", "sneezing", "a hoarse voice",
    "a dry cough", "a wet cough", "coughing up blood", "chest pain", "palpitations", "a racing heart",
    "swollen ankles", "leg cramps", "back pain", "neck pain", "shoulder pain", "knee pain", "hip pain",
    "stiff joints", "muscle aches", "weakness in my arm", "tingling in my fingers", "numb toes", "a tremor",
    "dizzy spells", "fainting", "blurry vision", "double vision", "itchy eyes", "watery eyes", "ringing ears",
    "earache", "a toothache", "bleeding gums", "bad breath", "a sore tongue", "difficulty swallowing",
    "indigestion", "bloating", "wind", "loss of appetite", "weight loss", "nausea in the mornings",
    "constant vomiting", "loose stools", "blood in my stool", "dark urine", "pain when peeing",
    "a burning rash", "an itchy scalp", "hair loss", "brittle nails", "bruising easily", "cold hands",
    "hot flushes", "mood swings", "low mood", "poor concentration", "memory problems", "feeling anxious",
    "racing thoughts", "nightmares", "snoring", "waking up gasping", "a headache behind my eyes",
    "a stiff neck", "jaw pain", "a lump in my neck", "a lump in my breast", "swollen lymph nodes", "a wheeze",
    "being short of breath", "a tight chest", "a pounding headache", "a sore back", "sharp stomach pain",
    "cramps in my belly", "pins and needles", "an irregular heartbeat", "sweating at night", "itching",
    "a blistering rash", "red patches on my skin", "flaky skin", "yellow skin", "swollen glands",
    "a high temperature", "aching all over", "exhaustion", "a lack of energy",
)
DRUGS = (
    "paracetamol", "ibuprofen", "aspirin", "codeine", "morphine", "tramadol", "amoxicillin", "penicillin",
    "doxycycline", "azithromycin", "clarithromycin", "ciprofloxacin", "metronidazole", "trimethoprim",
    "flucloxacillin", "prednisolone", "hydrocortisone", "dexamethasone", "beclometasone", "budesonide",
    "montelukast", "cetirizine", "loratadine", "chlorphenamine", "omeprazole", "lansoprazole", "ranitidine",
    "gaviscon", "loperamide", "lactulose", "senna", "metformin", "insulin", "gliclazide", "sitagliptin",
    "atorvastatin", "simvastatin", "ramipril", "lisinopril", "losartan", "bisoprolol", "atenolol",
    "furosemide", "warfarin", "apixaban", "rivaroxaban", "clopidogrel", "digoxin", "levothyroxine",
    "carbimazole", "sertraline", "fluoxetine", "citalopram", "amitriptyline", "mirtazapine", "diazepam",
    "lorazepam", "zopiclone", "gabapentin", "pregabalin", "sumatriptan", "propranolol", "allopurinol",
    "colchicine", "methotrexate", "folic acid", "vitamin d", "iron tablets", "an antihistamine",
    "an inhaler", "eye drops", "ear drops", "a nasal spray", "a steroid cream", "an antifungal cream",
    "antibiotics", "painkillers", "sleeping tablets", "the contraceptive pill", "a nicotine patch",
    "melatonin", "naproxen", "diclofenac", "salbutamol", "nitrofurantoin", "ferrous sulfate", "amlodipine",
)
TESTS = (
    "a blood test", "a urine test", "an x-ray", "an ultrasound", "an mri scan", "a ct scan", "an ecg",
    "an echocardiogram", "a colonoscopy", "an endoscopy", "a biopsy", "a skin prick test", "a hearing test",
    "an eye test", "a lung function test", "a sleep study", "a pregnancy test", "a bone density scan",
    "a stress test", "a cholesterol test", "a liver function test", "a thyroid test", "a swab",
    "a stool test", "a mammogram", "a smear test", "a covid test", "a blood pressure check", "a pet scan",
    "a lumbar puncture", "an allergy test", "a glucose test",
)
BODY_PARTS = (
    "head", "eyes", "ears", "nose", "throat", "mouth", "teeth", "jaw", "neck", "shoulder", "arm", "elbow",
    "wrist", "hand", "fingers", "chest", "back", "lower back", "stomach", "belly", "side", "hip", "groin",
    "leg", "thigh", "knee", "calf", "ankle", "foot", "toes", "skin", "scalp", "heart", "lungs", "liver",
    "kidneys", "bladder", "bowels", "spine", "ribs",
)
DOSES = (
    "one tablet a day", "two tablets twice a day", "five milligrams at night", "ten milligrams in the morning",
    "twenty milligrams once a day", "half a tablet", "one puff twice a day", "two drops three times a day",
    "a teaspoon every four hours", "four hundred milligrams with food", "one capsule before breakfast",
)
DURATIONS = kb.DURATIONS + ("a few hours", "since yesterday", "since last weekend", "about a fortnight",
                            "three months", "half a year", "most of the winter", "ten days")
PEOPLE = ("my son", "my daughter", "my husband", "my wife", "my mother", "my father", "my grandmother",
          "my grandfather", "my baby", "my partner", "my brother", "my sister", "my friend", "my neighbour")

# Slot name -> (entity label, values). A template's {slot}s are filled independently, even when they repeat.
_S = {"condition": ("CONDITION", CONDITIONS), "symptom": ("SYMPTOM", SYMPTOMS), "drug": ("DRUG", DRUGS),
      "test": ("TEST", TESTS), "body": ("BODY_PART", BODY_PARTS), "dose": ("DOSAGE", DOSES),
      "duration": ("DURATION", DURATIONS)}
TEMPLATES: tuple[str, ...] = (
    "I have had {symptom} for {duration}.",
    "I've had {symptom} and {symptom} for {duration}.",
    "{Person} has had {symptom} for {duration}.",
    "My {body} hurts and I have {symptom}.",
    "There's a pain in my {body} that gets worse at night.",
    "Could {symptom} be a sign of {condition}?",
    "Is it normal to get {symptom} with {condition}?",
    "Can {drug} cause {symptom}?",
    "Should I stop taking {drug} if I get {symptom}?",
    "Is it safe to take {drug} together with {drug}?",
    "How long should I keep taking {drug}?",
    "The doctor prescribed {drug}, {dose}.",
    "I was told to take {drug}, {dose}, for {duration}.",
    "I forgot my {drug} this morning, what should I do?",
    "Does {test} hurt?",
    "When will I get the results of {test}?",
    "I need to book {test} for my {body}.",
    "The nurse did {test} and said it looked fine.",
    "My doctor thinks it might be {condition}.",
    "I was diagnosed with {condition} last year.",
    "{Person} was diagnosed with {condition} and takes {drug}.",
    "Is {condition} contagious?",
    "Can you catch {condition} from someone at work?",
    "What is the difference between {condition} and {condition}?",
    "Does {condition} run in families?",
    "Will {condition} go away on its own?",
    "How serious is {condition} in older people?",
    "Can I exercise with {condition}?",
    "Is {drug} the best option for {condition}?",
    "After starting {drug} I noticed {symptom}.",
    "I woke up with {symptom} and {symptom} in my {body}.",
    "The {symptom} started after I fell on my {body}.",
    "Do I need {test} to rule out {condition}?",
    "The specialist wants {test} because of {symptom}.",
    "Every morning I get {symptom}, and it lasts {duration}.",
    "My {body} has been swollen for {duration}.",
    "Please tell me more about {condition}.",
    "What happens if {condition} is left untreated?",
    "Can {condition} affect my {body}?",
    "I'm pregnant, can I still take {drug}?",
)

def _fill(template: str, rng: random.Random) -> tuple[str, list[dict]]:
    text, entities = "", []
    rest = template
    while rest:
        head, brace, tail = rest.partition("{")
        text += head
        if not brace:
            break
        slot, _, rest = tail.partition("}")
        if slot == "Person":
            person = rng.choice(PEOPLE)
            text += person[0].upper() + person[1:] if not text else person
            continue
        label, values = _S[slot]
        pool = values
        if slot in ("condition", "symptom", "drug", "test") and rng.random() < 0.25:
            pool = _kb_terms()[slot]  # the knowledge base's own terms, as words (never their facts)
        value = rng.choice(pool)
        entities.append({"start": len(text), "end": len(text) + len(value), "label": label})
        text += value
    return text, entities


@functools.cache
def _kb_terms() -> dict[str, tuple[str, ...]]:
    return {"condition": tuple(c.name for c in kb.CONDITIONS),
            "symptom": tuple(s for c in kb.CONDITIONS for s in c.symptoms),
            "drug": tuple(c.drug for c in kb.CONDITIONS), "test": tuple(c.test for c in kb.CONDITIONS)}


def sentence(rng: random.Random) -> dict:
    """One sentence ``{text, entities, sentiment}``: a template filled from the vocabulary, with a worried or
    relieved tail a third of the time each (the sentiment label)."""
    text, entities = _fill(rng.choice(TEMPLATES), rng)
    sentiment = rng.choice(("negative", "neutral", "positive"))
    tail = {"negative": rng.choice(kb.NEGATIVE_PHRASES), "positive": rng.choice(kb.POSITIVE_PHRASES),
            "neutral": ""}[sentiment]
    return {"text": f"{text} {tail}".strip(), "entities": entities, "sentiment": sentiment}

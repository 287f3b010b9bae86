"""Training phrasings for the emergency triage screen: red-flag messages and ordinary consultation turns.

A patient, or someone speaking for a partner, parent, child or friend, says or types one turn to the
assistant. The triage classifier has to flag the red-flag emergencies (heart attack, stroke, anaphylaxis,
severe breathlessness, overdose, suicide with a plan, meningitis, heavy bleeding, collapse, severe
hypoglycaemia, obstetric emergencies, serious head injury) and leave ordinary consultations alone, including
the near misses that share an emergency's words (chest pain that turned out to be reflux, a bee sting with
only local swelling, a bump on the head yesterday and fine today).

:func:`emergency_messages` and :func:`benign_messages` build the turns compositionally: a symptom
description in plain patient language, said about someone (``{S}`` is "I" or "my dad"; the other slots
conjugate to match), inside one of many framings (first person, about someone else, a short urgent
fragment, with preceding history, a question at the end, calm and understated), with optional timings,
context and questions. Every text is as it would be said aloud (it is also spoken by text-to-speech): no
digits, abbreviations, emojis or markdown, five to forty words.

These are the training phrasings only. The held-out test phrasings are written separately, by someone
else, in ``medlm/eval/safety_sets.py``; this module never imports them (nor anything else from medlm), so
that the screen's test measures generalisation to wordings it never saw. The texts are teaching material
for a classifier, not medical advice.
"""

from __future__ import annotations

import math
import random
import re
from string import Formatter

CATEGORIES: tuple[str, ...] = (
    "cardiac",
    "stroke",
    "anaphylaxis",
    "breathing",
    "overdose",
    "suicide",
    "meningitis",
    "bleeding",
    "collapse",
    "hypoglycaemia",
    "obstetric",
    "head_injury",
)

# --- who the turn is about ---------------------------------------------------------------------------
# Slots in the texts: {S} / {P} / {O} first mention as subject / possessive / object ("my dad", "my dad's",
# "my dad"; "I", "my", "me"), then {he} {pos} {obj} {self} for later mentions and {be} {have} {s} {es}
# {dont} for the verbs that agree with the subject ("keep{s}", "{S} {dont} want").
SELF = {
    "S": "I",
    "P": "my",
    "O": "me",
    "he": "I",
    "pos": "my",
    "obj": "me",
    "self": "myself",
    "be": "am",
    "have": "have",
    "s": "",
    "es": "",
    "dont": "don't",
}


def _person(noun: str, he: str) -> dict[str, str]:
    obj = "him" if he == "he" else "her"
    pos = "his" if he == "he" else "her"
    return {
        "S": noun,
        "P": noun + "'s",
        "O": noun,
        "he": he,
        "pos": pos,
        "obj": obj,
        "self": obj + "self",
        "be": "is",
        "have": "has",
        "s": "s",
        "es": "es",
        "dont": "doesn't",
    }


ADULTS = tuple(
    _person(noun, he)
    for noun, he in (
        ("my husband", "he"),
        ("my wife", "she"),
        ("my dad", "he"),
        ("my mum", "she"),
        ("my mom", "she"),
        ("my grandad", "he"),
        ("my nan", "she"),
        ("my brother", "he"),
        ("my sister", "she"),
        ("my boyfriend", "he"),
        ("my girlfriend", "she"),
        ("my flatmate", "he"),
        ("my friend", "she"),
        ("my neighbour", "he"),
        ("my grandmother", "she"),
        ("my father in law", "he"),
        ("my colleague", "he"),
        ("my aunt", "she"),
    )
)
CHILDREN = tuple(
    _person(noun, he)
    for noun, he in (
        ("my son", "he"),
        ("my daughter", "she"),
        ("my little boy", "he"),
        ("my little girl", "she"),
        ("my toddler", "he"),
        ("my six year old", "she"),
        ("my teenage son", "he"),
        ("my teenage daughter", "she"),
    )
)
PREGNANT = tuple(
    _person(noun, "she")
    for noun in (
        "my wife",
        "my girlfriend",
        "my partner",
        "my daughter",
        "my sister",
        "my friend",
        "my flatmate",
    )
)
AT_RISK = tuple(
    _person(noun, he)
    for noun, he in (
        ("my son", "he"),
        ("my daughter", "she"),
        ("my teenage son", "he"),
        ("my teenage daughter", "she"),
        ("my husband", "he"),
        ("my wife", "she"),
        ("my brother", "he"),
        ("my sister", "she"),
        ("my best friend", "he"),
        ("my flatmate", "she"),
        ("my boyfriend", "he"),
        ("my dad", "he"),
        ("my mum", "she"),
    )
)
WHO = {
    "adult": (SELF, *ADULTS),
    "anyone": (SELF, *ADULTS, *CHILDREN),
    "other": (*ADULTS, *CHILDREN),
    "child": CHILDREN,
    "pregnant": (SELF, *PREGNANT),
    "at_risk": (SELF, *AT_RISK),
}

# --- emergencies ---------------------------------------------------------------------------------------
# Per category: who it can be about, symptom descriptions that work in the first and third person,
# descriptions only a bystander would give ("about_others"), and short subjectless fragments.
EMERGENCIES: dict[str, dict[str, str | tuple[str, ...]]] = {
    "cardiac": {
        "who": "adult",
        "symptoms": (
            "{S} {have} crushing pain in the middle of {pos} chest spreading down {pos} left arm",
            "{S} {have} a heavy pressure on {pos} chest like a weight and {he} {be} sweating",
            "{S} {have} a tight band around {pos} chest going up into {pos} jaw",
            "{S} {have} chest pain going through to {pos} back and {he} feel{s} sick",
            "{S} suddenly got a squeezing feeling in {pos} chest and {he} {be} grey and clammy",
            "{S} {have} pain in {pos} chest and both arms and {he} can't catch {pos} breath",
            "{S} {have} a really bad ache across {pos} chest with cold sweats and nausea",
            "{S} {have} chest tightness that won't go away even when {he} sit{s} still",
            "{S} {have} central chest pain radiating to {pos} left shoulder and {he} {be} short of breath",
            "{S} {have} angina but this pain is much worse and the spray isn't touching it",
            "{S} feel{s} like {pos} chest is in a vice and {pos} arm has gone numb",
            "{S} {have} a burning pressure behind {pos} breastbone and {he} {be} throwing up",
            "{S} {have} pain in {pos} jaw and left arm, a heavy chest, and {he} look{s} pale",
            "{S} {have} a tight chest, {pos} heart is racing and {he} feel{s} like passing out",
            "{S} {have} a dull heavy pain in {pos} chest and upper back and {he} {be} sweaty",
            "{S} {have} chest pain that started on the stairs and hasn't eased with rest",
            "{S} {have} a sudden tearing pain in {pos} chest going straight through to {pos} back",
            "{S} {have} tightness across {pos} chest and down both arms and {he} {be} really breathless",
            "{S} {have} pins and needles down {pos} left arm and a horrible pressure in {pos} chest",
            "{S} {have} what feels like bad indigestion but it is going into {pos} neck and arm",
            "{S} {have} had a heart attack before and this crushing chest pain feels the same",
            "{S} {be} having a heart attack, I think, the pain in {pos} chest is unbearable",
            "{S} {have} a pain like a fist squeezing {pos} heart and {he} {be} dripping with sweat",
        ),
        "about_others": (
            "{S} {be} clutching {pos} chest saying it feels like an elephant is standing on it",
            "{S} suddenly went grey, grabbed {pos} chest and said {pos} left arm hurts",
            "{S} collapsed onto the sofa holding {pos} chest and {he} {be} sweating and breathless",
        ),
        "fragments": (
            "crushing chest pain going down the left arm",
            "chest pain with sweating and feeling sick",
            "heavy chest, pain in the jaw, can't breathe properly",
            "tight chest spreading through to the back",
            "pressure in the chest, grey and clammy",
            "squeezing chest pain and the arm gone numb",
            "chest pain into the neck and shoulder, sweating",
            "pain behind the breastbone and throwing up",
        ),
    },
    "stroke": {
        "who": "adult",
        "symptoms": (
            "one side of {P} face has dropped and {he} can't smile properly",
            "{S} suddenly can't lift {pos} right arm and {pos} speech is slurred",
            "{S} {be} slurring {pos} words and {pos} left side has gone weak",
            "{S} suddenly can't get {pos} words out and {he} {be} making no sense",
            "{S} {have} gone numb down the whole left side of {pos} body",
            "{S} {have} suddenly lost the sight in one eye",
            "{S} {have} the worst headache of {pos} life and it came on like a thunderclap",
            "{S} {be} suddenly really confused and can't understand what people are saying",
            "{P} mouth is drooping on one side and {pos} arm feels heavy and useless",
            "{S} keep{s} dropping things with {pos} right hand and {pos} face looks lopsided",
            "{S} suddenly can't walk straight, {pos} leg won't work and {he} {be} dizzy",
            "{S} {be} talking gibberish all of a sudden and {pos} face has gone droopy",
            "{S} {have} sudden weakness in {pos} arm and leg on the same side",
            "{S} {have} double vision and can't swallow properly and it came on out of nowhere",
            "{S} woke up with garbled speech and one side of {pos} face won't move",
            "{S} got a sudden splitting headache, the worst ever, and {he} {be} being sick",
            "{S} can't raise both arms, the left one just drops straight down",
            "{P} face has gone lopsided and {pos} words are coming out wrong",
            "{S} suddenly can't see anything on the left side out of either eye",
            "{S} {have} lost all feeling in {pos} right arm and leg and {pos} face feels numb",
            "{S} suddenly can't find {pos} words and {pos} hand won't grip anything",
            "{S} lost {pos} balance all at once, {pos} speech is slurred and {he} {be} seeing double",
            "{S} {have} the signs of a stroke, {pos} face is drooping and {pos} arm is weak",
        ),
        "about_others": (
            "{S} {be} not making sense and {pos} mouth is twisted to one side",
            "{S} suddenly started speaking nonsense and {dont} seem to understand me",
            "{S} {be} staring blankly, one arm is hanging limp and {he} can't answer me",
        ),
        "fragments": (
            "face drooping on one side and an arm weak",
            "sudden slurred speech and one side numb",
            "can't lift the arm, words all muddled",
            "worst headache ever, came on in seconds",
            "suddenly gone blind in one eye",
            "face lopsided and can't speak properly",
            "sudden weakness all down one side",
            "suddenly confused and can't find the words",
        ),
    },
    "anaphylaxis": {
        "who": "anyone",
        "symptoms": (
            "{S} ate something with nuts in it and now {pos} lips and tongue are swelling up",
            "{P} throat feels like it is closing up after a wasp sting",
            "{S} {be} covered in hives and struggling to breathe after starting a new antibiotic",
            "{P} tongue is swelling and {he} can't swallow after eating prawns",
            "{S} got stung by a bee and {pos} face is swelling and {he} {be} wheezing",
            "{S} {have} a bad nut allergy and just ate a peanut biscuit, {pos} throat is tight",
            "{P} lips have blown up and {pos} voice has gone hoarse since the new tablets",
            "{S} {be} itchy all over with a blotchy rash and {pos} throat is swelling",
            "{S} used {pos} adrenaline pen but {pos} breathing is still getting worse",
            "{S} {be} wheezing and dizzy and {pos} face is puffing up after eating sesame",
            "{S} {be} having an allergic reaction, {pos} lips are swollen and {he} can't breathe properly",
            "{P} throat is tight and {pos} voice sounds strange after eating shellfish",
            "{S} {be} having anaphylaxis, I think, {he} ate egg and now {he} {be} wheezing",
            "{S} {have} hives spreading everywhere and {pos} tongue feels too big for {pos} mouth",
            "{S} {be} allergic to penicillin and was given it by mistake, now {he} {be} swelling up",
            "{S} got stung on the neck and now {he} {be} finding it hard to breathe",
            "{S} {be} going floppy and pale after peanut butter and {pos} face is swollen",
            "{S} {have} a swollen tongue and lips and {be} short of breath after a new painkiller",
            "{S} {have} a rash all over, a tight throat and {he} feel{s} faint after eating kiwi",
            "{P} eyes have swollen shut and {he} {be} wheezing after a hornet sting",
            "{S} ate out and now {pos} lips are swelling and {he} {be} coughing and wheezing",
            "{S} {have} a latex allergy and {pos} throat is closing up after the dentist",
        ),
        "about_others": (
            "{S} {be} scratching at {pos} throat, covered in welts, after eating a cashew",
            "{S} went blotchy and started gasping a few minutes after the antibiotic injection",
        ),
        "fragments": (
            "lips and tongue swelling after peanuts",
            "throat closing up after a bee sting",
            "hives everywhere and can't breathe",
            "allergic reaction, face swelling, wheezing badly",
            "swollen tongue after a new medicine",
            "used the adrenaline pen, still can't breathe",
            "stung by a wasp and throat tight",
            "allergic to shellfish, lips blowing up",
        ),
    },
    "breathing": {
        "who": "anyone",
        "symptoms": (
            "{S} can't catch {pos} breath at all and can't finish a sentence",
            "{P} lips have gone blue and {he} {be} gasping for air",
            "{S} {be} having an asthma attack and the blue inhaler isn't helping",
            "{S} {have} used {pos} inhaler ten times and {he} {be} still wheezing badly",
            "{S} {be} choking on a piece of food and can't cough it up",
            "{S} {be} struggling to breathe and {pos} ribs are sucking in with every breath",
            "{S} can only say one or two words between breaths",
            "{P} lips and fingertips are turning grey and {he} {be} really breathless",
            "{S} {be} so short of breath that {he} can't lie down or talk",
            "{S} {be} wheezing so hard {he} can hardly move any air",
            "{S} suddenly got breathless with a sharp pain breathing in, and {pos} calf has been swollen",
            "{S} {be} making a high pitched noise breathing in and can't swallow {pos} spit",
            "{S} {have} a bad chest infection and now {he} {be} breathing really fast and going blue",
            "{S} {have} something stuck in {pos} throat and can't breathe or speak",
            "{S} {be} breathing really fast and shallow and can't get enough air in",
            "{S} {have} emphysema and {pos} breathing is the worst it has ever been, even on oxygen",
            "{P} breathing is really noisy and laboured and {he} {be} getting exhausted",
            "{S} {be} gasping and can't get {pos} breath after breathing in smoke from a fire",
            "{S} {be} too breathless to walk to the bathroom and {pos} lips look dusky",
            "{S} {be} fighting for breath and the nebuliser has done nothing",
            "{S} {be} severely short of breath at rest and {pos} oxygen reading says eighty four",
            "{S} {have} a tight wheezy chest, can't talk and the inhaler is doing nothing",
        ),
        "about_others": (
            "{S} {be} choking and going purple and I can't get it out",
            "{S} swallowed a grape the wrong way and {he} {be} turning blue",
            "{S} {be} breathing really strangely with long pauses and {pos} lips are blue",
        ),
        "fragments": (
            "can't breathe, can't talk in sentences",
            "asthma attack and the inhaler not working",
            "lips going blue and gasping for air",
            "choking and can't get it out",
            "really struggling to breathe right now",
            "so breathless I can barely speak",
            "wheezing badly and lips gone grey",
            "something stuck in the throat, can't breathe",
        ),
    },
    "overdose": {
        "who": "anyone",
        "symptoms": (
            "{S} {have} taken a whole packet of paracetamol",
            "{S} swallowed about thirty of {pos} sleeping tablets",
            "{S} drank some bleach from under the sink",
            "{S} got into the cupboard and ate some of the dishwasher tablets",
            "{S} {have} taken far too many of {pos} heart pills by mistake",
            "{S} took a load of painkillers with a bottle of vodka",
            "{S} {have} swallowed a button battery from the remote",
            "{S} ate a handful of someone else's blood pressure tablets",
            "{S} drank antifreeze from a bottle in the garage",
            "{S} {have} overdosed on {pos} antidepressants",
            "{S} {have} taken double {pos} methadone dose and {he} {be} getting very drowsy",
            "{S} drank weedkiller from an old bottle in the shed",
            "{S} bit into a liquid laundry capsule and {he} {be} coughing and drooling",
            "{S} {have} taken a whole strip of ibuprofen and {he} feel{s} sick and dizzy",
            "{S} ate wild mushrooms from the woods and now {he} {be} vomiting and confused",
            "{S} got a mouthful of oven cleaner and {pos} mouth is burning",
            "{S} took some pills at a party and now {he} {be} burning up and shaking",
            "{S} ate a lot of iron tablets that were left out on the side",
            "{S} drank white spirit from a bottle thinking it was water",
            "{S} {have} drunk the whole bottle of liquid paracetamol medicine",
            "{S} {have} taken all {pos} tablets at once, the whole week's supply",
            "{S} {have} taken a huge amount of codeine and {he} {be} breathing very slowly",
            "{S} swallowed some rat poison pellets that were left in the shed",
        ),
        "about_others": (
            "I found {O} next to an empty bottle of pills and {he} {be} barely awake",
            "{S} got into the medicine cabinet and ate a load of the tablets",
            "{S} {have} been drinking the cleaning spray from under the sink",
        ),
        "fragments": (
            "swallowed a whole packet of pills",
            "drank bleach by accident just now",
            "child ate the dishwasher tablets",
            "took far too many sleeping tablets",
            "ate rat poison from the shed",
            "took an overdose of paracetamol",
            "swallowed a button battery, I think",
            "took a bottle of pills with alcohol",
        ),
    },
    "suicide": {
        "who": "at_risk",
        "symptoms": (
            "{S} {be} going to kill {self} tonight",
            "{S} {have} written a note and {have} the pills ready",
            "{S} {have} the rope ready in the garage and tonight is the night",
            "{S} {have} saved up enough tablets to end it and {he} {be} going to take them",
            "{S} {have} made a plan to end {pos} life and said goodbye to everyone",
            "{S} {be} standing on a bridge and {he} want{s} to jump",
            "{S} {dont} want to be alive anymore and {have} the means to do it right here",
            "{S} {have} given {pos} things away and written letters, and {he} {be} doing it tonight",
            "{S} {have} a knife and {be} going to end it all",
            "{S} {have} started taking the pills and {he} {be} going to take the rest",
            "{S} {be} sitting in the car in the garage with the engine running",
            "{S} {have} decided how {he} {be} going to kill {self} and it will be this weekend",
            "{S} {be} planning to take {pos} own life and {have} bought what {he} need{s}",
            "{S} can't go on, {he} {have} the tablets lined up and a note written",
            "{S} {have} looked up the best way to die and {have} everything ready",
            "{S} {be} going to drive into a wall tonight, {he} {have} made up {pos} mind",
            "{S} want{s} to die and {be} going to do it when everyone is asleep",
            "{S} {have} got a gun out and {be} talking about ending it",
            "{S} {have} no reason to live and {have} worked out how and when to do it",
            "{S} {have} put {pos} affairs in order and {be} going to take an overdose tonight",
            "{S} {be} suicidal, {he} {have} a plan and the means, and {he} {dont} feel safe",
            "{S} {be} on the edge of the cliff path and {he} {be} going to let go",
        ),
        "about_others": (
            "{S} told me {he} {be} going to kill {self} and {have} locked {self} in the bathroom",
            "{S} sent me a goodbye message saying {he} {be} ending it tonight",
            "{S} {be} on the roof of the building saying goodbye to everyone",
        ),
        "fragments": (
            "want to die tonight, have the pills ready",
            "written the note and going to do it",
            "going to kill myself tonight, have a plan",
            "rope is ready and I can't go on",
            "standing on the bridge, going to jump",
            "going to end it, have everything ready",
            "suicidal with a plan and the means",
            "said goodbye to everyone, ending my life tonight",
        ),
        "timings": (
            "this has been building for weeks but tonight is different",
            "it got much worse this evening",
            "it all came to a head after an argument today",
            "nothing has felt right since the funeral",
            "the plan was made last night",
            "it was decided earlier today",
            "it has been like this since this morning",
            "things fell apart about an hour ago",
        ),
    },
    "meningitis": {
        "who": "anyone",
        "symptoms": (
            "{S} {have} a high fever and a stiff neck and can't stand the light",
            "{S} {have} purple spots that don't fade when I press a glass on them",
            "{S} {be} really drowsy and floppy with a high temperature and a blotchy rash",
            "{S} {have} a fever and a terrible headache and can't bend {pos} neck forward",
            "{S} {be} hard to wake, burning hot, and {have} little dark red spots on {pos} legs",
            "{S} {have} a temperature, {pos} hands and feet are ice cold and {he} {be} very sleepy",
            "{S} {be} being sick with a fever and the light is hurting {pos} eyes",
            "{S} {have} a non blanching rash and a high fever",
            "{S} {have} a fever and a rash that stays when I roll a glass over it",
            "{S} {have} a stiff neck and a fever and {he} {be} getting more and more confused",
            "{S} {have} gone very sleepy with a fever and spots that don't fade",
            "{S} {have} pinprick spots spreading across {pos} tummy and {he} {be} burning up",
            "{S} {have} a raging temperature, {pos} neck is rigid and {he} keep{s} being sick",
            "{S} {have} a high temperature, {pos} skin looks mottled and {he} {be} very drowsy",
            "{S} {have} a fever and {he} {be} lying in the dark, unable to move {pos} neck",
            "{S} {have} a fever and a purple blotchy rash that is spreading fast",
            "{S} {have} aching legs, cold hands, a fever and {he} {be} really drowsy",
            "{S} {be} floppy and barely responding with a temperature and a rash",
            "{S} {have} a fever and a dark rash that doesn't go away when pressed",
            "{S} {have} a fever, {pos} neck hurts to move and bright light makes {obj} wince",
            "{S} {have} a fever and confusion and the doctor mentioned meningitis last time",
            "{S} {have} suspected meningitis, a fever, a stiff neck and a spreading rash",
        ),
        "about_others": (
            "{S} {be} burning hot and cries out whenever I try to move {pos} head",
            "{S} won't eat or drink, {be} very drowsy and {have} a fever with spots",
            "I can't wake {O} properly and {he} {be} burning hot with a stiff neck",
        ),
        "fragments": (
            "fever, stiff neck and hates the light",
            "rash that won't fade under a glass",
            "drowsy child with a fever and spots",
            "purple spots and a high temperature",
            "fever and a rash that stays when pressed",
            "stiff neck, headache, vomiting and fever",
            "burning hot and floppy with a rash",
            "fever and can't touch the chin to the chest",
        ),
    },
    "bleeding": {
        "who": "anyone",
        "symptoms": (
            "{S} {have} cut {pos} arm badly and it won't stop bleeding even with pressure",
            "{S} {be} vomiting blood, quite a lot of it",
            "{S} {have} been passing black tarry poo and {he} feel{s} faint and dizzy",
            "{S} {have} a deep cut on {pos} leg and blood is spurting out",
            "{S} {have} had a nosebleed for an hour and {he} {be} on blood thinners",
            "{S} {be} coughing up bright red blood",
            "{S} {have} soaked through three towels and the wound is still bleeding",
            "{S} sliced {pos} hand on a broken glass and it is pumping blood",
            "{S} {be} throwing up what looks like coffee grounds and {he} {be} very pale",
            "{S} {have} black sticky stools and nearly fainted getting up",
            "{S} {be} bleeding heavily from the back passage and {he} feel{s} lightheaded",
            "{S} {have} a big gash on {pos} head that keeps bleeding through the bandage",
            "{S} had a tooth out and {pos} mouth keeps filling with blood that won't stop",
            "{S} {have} a wound gushing blood and pressing on it isn't working",
            "{S} put {pos} hand through a window and there is blood everywhere",
            "{S} {be} losing a lot of blood from a cut on {pos} thigh",
            "{S} {be} vomiting large amounts of dark red blood and {he} {be} shaky",
            "{S} {have} a nosebleed that has been pouring for forty minutes and {he} {be} going pale",
            "{S} {be} passing lots of blood and clots and {he} {be} dizzy and cold",
            "{S} {be} bleeding heavily from an operation wound and the dressing is soaked",
            "{S} {have} an open wound and the blood is coming out in spurts",
            "{S} fell onto a glass table and {pos} arm is cut deep and bleeding heavily",
            "{S} {have} had a massive bleed from a varicose vein, the floor is covered in blood",
        ),
        "about_others": (
            "{S} {be} lying in a pool of blood from a cut on {pos} leg",
            "{S} {have} gone white and blood is soaking through the tea towel on {pos} arm",
        ),
        "fragments": (
            "heavy bleeding that won't stop",
            "vomiting lots of blood right now",
            "black tarry stools and very dizzy",
            "blood spurting from a deep cut",
            "soaked through the towels, still bleeding",
            "coughing up a lot of blood",
            "cut an artery, I think, blood everywhere",
            "nosebleed for an hour on blood thinners",
        ),
    },
    "collapse": {
        "who": "other",
        "symptoms": (
            "{S} {have} collapsed and {he} {be} not responding to me",
            "{S} {be} unconscious on the floor and I can't wake {obj}",
            "{S} {be} not breathing properly, just making gasping noises",
            "{S} {have} been fitting for more than five minutes and it isn't stopping",
            "{S} fainted and {be} still out cold after a couple of minutes",
            "{S} went down suddenly and {he} {be} not moving",
            "{S} {be} having one seizure after another and not waking in between",
            "{S} {be} lying on the floor with {pos} eyes open but not responding to anything",
            "{S} {be} blue around the lips and I can't feel a pulse",
            "{S} just dropped to the ground and {he} {be} not breathing",
            "{S} {have} passed out and I can't rouse {obj} at all",
            "{S} {have} been shaking and jerking for ten minutes and won't come round",
            "I found {O} on the bathroom floor and {he} won't wake up",
            "{S} {be} completely floppy and unresponsive",
            "{S} {be} breathing very oddly and {dont} react when I shout {pos} name",
            "{S} keeled over at the dinner table and {he} {be} not responding",
            "{S} {be} having a fit and {pos} lips are turning blue",
            "{S} collapsed in the garden and {he} {be} barely breathing",
            "{S} blacked out and {have} been unconscious for several minutes",
            "{S} had a seizure and {he} {be} still not conscious twenty minutes later",
            "{S} {be} slumped in the chair, grey and not responding",
            "I can't wake {O}, {he} {be} breathing but totally unresponsive",
            "{S} went rigid, then started jerking, and it has been going on for ages",
        ),
        "about_others": (),
        "fragments": (
            "collapsed and not responding at all",
            "unconscious and not breathing properly",
            "seizure that won't stop, still fitting",
            "fainted and I can't wake them",
            "found on the floor and not breathing",
            "passed out and won't come round",
            "fitting for ten minutes now",
            "unresponsive and making gasping noises",
        ),
    },
    "hypoglycaemia": {
        "who": "anyone",
        "symptoms": (
            "{S} {be} diabetic and {he} {be} shaking, sweating and really confused",
            "{P} blood sugar is very low and {he} can't eat or drink anything",
            "{P} sugar reading is two point one and {he} {be} too confused to take anything",
            "{S} {be} on insulin and acting drunk and slurring, but {have} not had a drink",
            "{S} {have} type one diabetes and {he} {be} drenched in sweat and shaking badly",
            "{S} took {pos} insulin but didn't eat and now {he} {be} pale, sweaty and muddled",
            "{S} {be} diabetic and vomiting, can't keep sugar down and {pos} reading is very low",
            "{P} glucose is really low, the sweets aren't bringing it up and {he} {be} getting confused",
            "{S} {have} diabetes and {he} {be} suddenly aggressive, sweaty and not making sense",
            "{S} {be} having a bad hypo and {he} {be} too drowsy to swallow anything",
            "{P} meter just says low and {he} {be} shaking and can barely talk",
            "{S} {be} diabetic and trembling, {pos} heart is pounding and {he} {be} sweating and confused",
            "{S} injected too much insulin and {he} {be} going very shaky and confused",
            "{P} sugar is one point eight and {he} {be} hardly making sense",
            "{S} {have} diabetes and {he} {be} seeing double, sweating and can't stand up",
            "{S} {be} on diabetes tablets, went sweaty and confused at lunch and {be} not improving",
            "{S} {be} type one, {pos} sugar has crashed and {he} can't hold a drink",
            "{S} {be} diabetic and {he} {be} cold, clammy and staring blankly",
            "{S} {have} very low blood sugar and {he} {be} more confused even after juice",
            "{S} {be} diabetic and {have} gone very quiet, pale and sweaty",
            "{S} {be} diabetic and {he} {be} pouring with sweat and talking nonsense",
            "{S} {have} severe hypoglycaemia, {he} {be} confused and can't swallow the glucose gel",
        ),
        "about_others": (
            "{S} {be} diabetic and I can't wake {obj} up",
            "I found {O} sweaty and unrousable and {he} {be} diabetic",
            "{S} {be} diabetic and too drowsy to drink the juice I am giving {obj}",
        ),
        "fragments": (
            "diabetic, shaking, sweating and confused",
            "sugar really low and can't eat",
            "bad hypo and can't swallow anything",
            "blood sugar crashed, not making sense",
            "on insulin, very confused and sweaty",
            "low sugar and the juice isn't working",
            "diabetic and drowsy with sugar very low",
            "sugar reading very low, trembling and confused",
        ),
    },
    "obstetric": {
        "who": "pregnant",
        "symptoms": (
            "{S} {be} thirty weeks pregnant and bleeding heavily",
            "{S} {be} pregnant and {have} terrible pain in {pos} belly that won't ease",
            "{S} {be} thirty six weeks and the baby hasn't moved since yesterday",
            "{S} {be} pregnant with a bad headache, flashing lights and a swollen face and hands",
            "{P} waters have broken and {he} {be} only twenty eight weeks",
            "{S} {be} eight weeks pregnant with sharp pain on one side and {he} feel{s} faint",
            "{S} {be} pregnant and passing big clots of blood",
            "{S} {be} thirty four weeks pregnant and {have} not felt the baby move all day",
            "{S} {be} pregnant and {have} blurred vision, a pounding headache and swollen ankles",
            "{S} {be} seven months pregnant and just had a sudden gush of fluid",
            "{S} {be} pregnant and soaking through pads with blood",
            "{S} {be} pregnant with constant severe stomach pain and the bump feels rock hard",
            "{S} {be} twenty nine weeks pregnant and having regular contractions",
            "{S} had a baby four days ago and {he} {be} bleeding very heavily",
            "{S} {be} pregnant, {have} pain under {pos} ribs and {he} {be} seeing spots",
            "{S} {be} pregnant and fell down the stairs and now {have} bleeding and cramps",
            "{S} {be} in labour and the cord is coming out after {pos} waters broke",
            "{S} {be} pregnant and the baby is moving much less than normal today",
            "{S} {be} thirty two weeks pregnant, leaking fluid and running a temperature",
            "{S} {be} pregnant and {have} just had a fit",
            "{S} {be} in early pregnancy with shoulder tip pain and heavy bleeding",
            "{S} {be} pregnant and suddenly very swollen with the worst headache and vomiting",
        ),
        "about_others": (
            "{S} {be} pregnant and {he} {be} doubled over in pain and white as a sheet",
            "{S} {be} heavily pregnant and {have} gone very pale and {he} {be} bleeding",
        ),
        "fragments": (
            "pregnant and bleeding very heavily",
            "the baby has stopped moving",
            "waters broke and only thirty weeks",
            "pregnant, bad headache, blurred vision, swollen face",
            "pregnant with severe pain in the belly",
            "early pregnancy, pain on one side, feeling faint",
            "no baby movements since this morning",
            "pregnant and passing big clots",
        ),
    },
    "head_injury": {
        "who": "anyone",
        "symptoms": (
            "{S} hit {pos} head and {have} been sick three times since",
            "{S} fell and banged {pos} head and now {he} {be} confused and repeating {self}",
            "{S} {be} on blood thinners and fell and hit {pos} head",
            "{S} bumped {pos} head and {he} {be} getting more and more drowsy",
            "{S} {have} clear fluid dripping from {pos} nose after a knock to the head",
            "{S} fell off a ladder onto {pos} head and can't remember what happened",
            "{S} {have} a head injury and {pos} pupils look like different sizes",
            "{S} hit {pos} head in a car crash and {have} a headache that keeps getting worse",
            "{S} banged {pos} head and now {he} {be} slurring {pos} words",
            "{S} fell down the stairs, hit {pos} head and {he} {be} vomiting",
            "{S} {be} on warfarin and knocked {pos} head hard on a cupboard door",
            "{S} got hit in the head by a cricket ball and was knocked out",
            "{S} {have} bruising behind {pos} ears after a fall onto {pos} head",
            "{S} fell off a bike without a helmet and {he} {be} being sick and sleepy",
            "{S} hit {pos} head hard and {have} had a fit since",
            "{S} {have} a big bump on {pos} head from a fall and {he} {be} really confused",
            "{S} fell and hit {pos} head and now {pos} vision is blurry and {he} {be} dizzy",
            "{S} {have} a head injury and there is blood coming from {pos} ear",
            "{S} knocked {pos} head and now {he} {be} irritable and can't stay awake",
            "{S} got kicked in the head in a fight and {he} {be} not acting normal",
            "{S} banged {pos} head an hour ago and now {have} weakness in one arm",
            "{S} {be} on anticoagulants and had a fall where {he} hit {pos} head",
            "{S} fell from the top bunk onto {pos} head and {have} been sick twice",
        ),
        "about_others": (
            "{S} hit {pos} head and {he} {be} not making sense when I talk to {obj}",
            "{S} fell and hit {pos} head and I can't keep {obj} awake",
        ),
        "fragments": (
            "hit the head and keeps vomiting",
            "head injury and very drowsy now",
            "fell, banged the head, now confused",
            "on blood thinners and hit the head",
            "clear fluid from the nose after a fall",
            "knocked out and still confused",
            "head injury and getting sleepier",
            "banged the head, pupils different sizes",
        ),
    },
}

# Shared by both kinds of turn, so that neither a history nor a question gives the answer away.
CONTEXTS = (
    "{S} {be} diabetic",
    "{S} {have} asthma",
    "{S} {have} had a cold all week",
    "{S} was absolutely fine an hour ago",
    "{S} {have} never had anything like this",
    "{S} {be} usually really healthy",
    "{S} {have} epilepsy",
    "{S} {be} on quite a few medications",
    "{S} {have} been really stressed lately",
    "{S} just got back from holiday",
)
ASKS = (
    "what should I do?",
    "is this serious?",
    "should I be worried?",
    "should {he} go to hospital?",
    "what do you think?",
    "is this an emergency?",
    "can this wait until the morning?",
    "should I ring my doctor tomorrow?",
)
EMERGENCY_ASKS = (*ASKS, "should I call an ambulance?", "please tell me what to do.", "what do I do now?")
BENIGN_ASKS = (
    *ASKS,
    "should {he} see a doctor?",
    "is there anything {he} can take?",
    "does this need an appointment?",
    "how long will it take to clear up?",
)
EMERGENCY_TIMINGS = (
    "it started about twenty minutes ago",
    "it came on suddenly about ten minutes ago",
    "it has been like this since this morning",
    "it began about an hour ago",
    "it all happened in the last half hour",
    "it started just after lunch",
    "it came on while we were watching television",
    "it has been getting worse over the last hour",
    "it only started five minutes ago",
    "it has been like this since last night",
)
BENIGN_TIMINGS = (
    "it has been like this for about a week",
    "it started after the weekend",
    "it comes and goes",
    "it has been on and off for a month",
    "it started this morning",
    "it has been like this since last night",
    "it has been going on since the summer",
    "it started a couple of days ago",
    "it has been a few weeks now",
)

# Framings. {clause} is a description with its first mention, {pron} the same after a {context},
# {also} a second description of the same category, {fragment} a subjectless fragment.
EMERGENCY_FRAMINGS = (
    "{clause}.",
    "{clause}. {timing}.",
    "{clause}, {ask}",
    "{clause}. {timing}. {ask}",
    "Please help, {clause}.",
    "{context} and now {pron}.",
    "{context}. {timing}, and now {pron}.",
    "Sorry to bother you, it's probably nothing, but {clause}.",
    "I don't want to make a fuss, but {clause}. {ask}",
    "{clause} and {also}.",
    "{clause}, {also}. What do I do?",
    "Is it bad that {clause}?",
    "{clause}. I'm really scared.",
    "Quick question, {clause}. Can it wait until I see my doctor next week?",
    "Hi there, {clause}. {ask}",
    "I'm not sure if this is urgent, but {clause}.",
    "I don't know if this counts, but {clause}.",
    "{timing}. {clause}, {ask}",
    "Can you help me? {clause}.",
    "{fragment}. Please help.",
    "{fragment}, {ask}",
    "Help, {fragment}.",
    "Urgent, {fragment}. {timing}.",
)

# --- ordinary consultations ----------------------------------------------------------------------------
# Descriptions (with a subject) and questions (ending in a question mark, said by the patient), keyed by
# who they can be about.
ORDINARY = {
    "anyone": (
        "{S} {have} had a runny nose and a sore throat for a few days",
        "{S} {have} an itchy rash on {pos} arms that comes and goes",
        "{S} {have} a mild headache most afternoons",
        "{S} {have} a tickly cough that has hung around since a cold",
        "{S} {have} dry, cracked skin on {pos} hands",
        "{S} {have} a blocked nose and pressure around {pos} cheeks",
        "{S} {have} been constipated for a few days",
        "{S} {have} an ingrown toenail that is a bit sore",
        "{S} {have} a cold sore on {pos} lip",
        "{S} {have} earache in one ear since swimming",
        "{S} {have} a verruca on the bottom of {pos} foot",
        "{S} {have} hay fever and {pos} eyes are itchy",
        "{S} {have} mild diarrhoea since yesterday but {be} drinking fine",
        "{S} {have} a wart on {pos} finger",
        "{S} {have} a couple of mouth ulcers",
        "{S} sprained {pos} ankle playing football last week and it is still a bit swollen",
        "{S} {have} a mild sunburn on {pos} shoulders",
        "{S} {have} athlete's foot between {pos} toes",
        "{S} {have} a slight temperature with a cold but {be} eating and drinking normally",
        "{S} {have} a bit of a sore throat and a hoarse voice",
        "{S} {have} head lice, I think, {pos} scalp is really itchy",
        "{S} {have} a stye on {pos} eyelid",
        "{S} {have} chapped lips that keep splitting",
        "{S} {have} been sneezing a lot since we got a cat",
        "{S} {have} flaky itchy patches on {pos} elbows",
        "how much water should I be drinking each day?",
        "when can I get my flu jab this year?",
        "can I take ibuprofen with my blood pressure tablets?",
        "what do my cholesterol results actually mean?",
        "is it okay to have a glass of wine while on antibiotics?",
        "what vaccinations do I need for a trip to Thailand?",
        "how can I get a better night's sleep?",
        "what counts as a healthy breakfast?",
        "my blood test showed slightly low iron, what should I eat?",
        "can I take an antihistamine and paracetamol together?",
        "how long does a normal cold usually last?",
        "is it safe to take vitamin D all year round?",
        "what can I do about my partner's snoring?",
        "how often should I have my cholesterol checked?",
        "is there a hay fever tablet that won't make me drowsy?",
        "how many steps a day should I aim for?",
        "can I get a repeat prescription for my inhaler?",
        "what time of day is best to take my thyroid tablet?",
        "my thyroid result came back borderline, what does that mean?",
        "when is my son due his next vaccinations?",
        "how do I get a referral to a physiotherapist?",
        "is it better to use ice or heat on a pulled muscle?",
        "can I still take my statin if I drink grapefruit juice?",
        "how much sleep does a teenager really need?",
        "what is a normal resting heart rate for my age?",
        "are there any side effects from the shingles vaccine?",
    ),
    "adult": (
        "{S} {have} a nagging lower back ache after gardening",
        "{S} {have} a sore knee when going down the stairs",
        "{S} can't sleep well and keep{s} waking up at four in the morning",
        "{S} {have} mild heartburn after big meals",
        "{S} {have} sore, tired eyes after working at the computer",
        "{S} {have} a stiff shoulder from sleeping awkwardly",
        "{S} {have} been feeling tired a lot lately",
        "{S} {have} dandruff that won't go away",
        "{S} {have} some spots on {pos} chin that won't clear",
        "{S} get{s} bloated after eating bread",
        "{S} {have} wax in {pos} ears and can't hear so well",
        "{S} {have} tennis elbow from painting the house",
        "{S} pulled a muscle in {pos} calf while running",
        "{S} {have} occasional ringing in {pos} ears",
        "{S} get{s} cramp in {pos} legs at night",
        "{S} {have} a small soft lump under the skin on {pos} back that doesn't hurt",
        "{S} {have} mild hip pain when walking the dog",
        "{S} {have} had a dry cough since starting a new tablet",
        "{S} {have} put on some weight and would like some advice on diet",
        "{S} {have} a sore patch on {pos} heel when walking first thing",
    ),
    "child": (
        "{S} {have} a wobbly tooth that is taking ages to come out",
        "{S} {have} threadworms, I think, {pos} bottom is itchy at night",
        "{S} keep{s} getting tummy aches before school",
        "{S} {be} a fussy eater and won't touch vegetables",
        "{S} {have} a few warts on {pos} hands from the swimming pool",
        "{S} {have} growing pains in {pos} legs at bedtime",
    ),
}

# Near misses: an emergency's vocabulary, but nothing urgent.
NEAR_MISSES = {
    "anyone": (
        "I had chest pain last year that turned out to be acid reflux, can I keep taking the antacids?",
        "what are the main risk factors for a stroke, and how can I lower mine?",
        "how would I recognise the signs of a heart attack in someone else?",
        "what are the warning signs of a stroke that I should teach my parents?",
        "I had a seizure two years ago and none since, when can I drive again?",
        "I've been feeling low lately, no plans or thoughts of harming myself, could I see a counsellor?",
        "I'm diabetic, what is a good breakfast that won't spike my sugar?",
        "how do I use an adrenaline pen, I've just been given one for a mild nut allergy?",
        "what should I keep in a first aid kit for cuts and grazes?",
        "I'm on blood thinners and I bruise easily, is that normal?",
        "my asthma has been well controlled for months, can I cut down my preventer inhaler?",
        "what is the difference between a panic attack and a heart attack?",
        "how do you do the glass test on a rash, just so I know for the future?",
        "what are the symptoms of meningitis I should look out for in a baby?",
        "how many paracetamol can an adult safely take in a day?",
        "I accidentally took my vitamin tablet twice this morning, is that a problem?",
        "is it safe to keep cleaning products under the sink with a toddler in the house?",
        "I fainted once years ago when giving blood, can I still donate?",
        "my dad had a stroke last year and is doing well, how can we prevent another one?",
        "I had a heart attack five years ago and feel great, can I start running again?",
        "I'm on antidepressants and feeling much better, when could I think about stopping?",
        "my blood sugar was a bit high after some birthday cake, will it come down on its own?",
        "what is the best way to treat a small burn from the oven?",
        "{S} got stung by a bee and there is just a small itchy swollen patch around the sting",
        "{S} bumped {pos} head on a cupboard door yesterday and {be} completely fine today",
        "{S} {be} diabetic and would like some ideas for healthy snacks",
        "{S} {have} a few hives from a new washing powder, no swelling and breathing is fine",
        "{S} {have} a bruise on {pos} shin from walking into the coffee table",
        "{S} {have} a heart murmur the doctor said is harmless, does it need checking again?",
        "{S} had a nosebleed this morning that stopped after five minutes of pinching",
        "{S} {be} diabetic and {pos} sugar has been steady, when is the next review due?",
    ),
    "adult": (
        "{S} cut {pos} finger chopping vegetables but it stopped bleeding with a plaster",
        "{S} {have} been a little puffed climbing hills since a cold last month but {be} fine at rest",
        "{S} {have} a mild headache after a long day at the screen that goes with paracetamol",
        "{S} had a dizzy spell standing up too fast this morning and {have} been fine since",
        "{S} {have} a twinge in {pos} chest when coughing with a cold that goes straight away",
        "{S} {have} felt down since losing {pos} job but {be} coping and would like to talk to someone",
    ),
    "child": (
        "{S} {have} a mild temperature but {be} playing happily, how much children's paracetamol can I give?",
        "{S} swallowed a bit of toothpaste while brushing, is that okay?",
        "{S} fell over at the park and bumped {pos} head, cried straight away and {be} running about now",
        "{S} {have} chickenpox spots that fade under a glass, how do I ease the itching?",
        "{S} {have} a cough and a runny nose but {be} eating well, should {he} stay off school?",
        "{S} grazed {pos} knee falling off {pos} scooter and it has stopped bleeding",
    ),
    "pregnant": (
        "{S} {be} pregnant and would like to know which exercise is safe",
        "{S} {be} twenty weeks pregnant and the baby is kicking a lot, is that normal?",
        "{S} {be} pregnant with mild ankle swelling in the evenings but normal blood pressure checks",
        "{S} {be} pregnant, which foods should {he} avoid?",
        "{S} {be} pregnant and {have} some morning sickness, what helps?",
        "{S} {be} pregnant and {have} a bit of heartburn, which antacids are safe?",
    ),
}

BENIGN_FRAMINGS = (
    "{clause}.",
    "{clause}. {ask}",
    "{clause}, {ask}",
    "Hi, {clause}. {ask}",
    "{context} and {pron}. {ask}",
    "{clause}. {timing}.",
    "{clause}. {timing}. {ask}",
    "Sorry to bother you, it's probably nothing, but {clause}.",
    "I'm not sure if this is urgent, but {clause}.",
    "I don't know if this counts, but {clause}.",
    "Quick question, {clause}. Can it wait until I see my doctor next week?",
    "Is it normal that {clause}?",
    "I've got an appointment next week, but {clause}, {ask}",
    "Can you help me? {clause}. {ask}",
    "{question}",
    "Hi, {question}",
    "Quick question, {question}",
    "I was wondering, {question}",
    "Sorry to bother you, {question}",
    "Can you help me? {question}",
    "Hi there, I hope you can help, {question}",
    "I've been meaning to ask, {question}",
)

_FIRST = re.compile(r"\{[SPO]\}")
_LATER = {"{S}": "{he}", "{P}": "{pos}", "{O}": "{obj}"}  # a first mention said again, as a pronoun
_SENTENCE_START = re.compile(r"(^|[.?!] )([a-z])")


def _units(texts: tuple[str, ...], who: tuple[dict[str, str], ...]) -> list[tuple[str, dict[str, str]]]:
    """Every (text, subject) pair: a text with a first mention takes each subject, one without takes SELF."""
    return [(text, person) for text in texts for person in (who if _FIRST.search(text) else (SELF,))]


def _draw(rng: random.Random, n: int, framings: tuple[str, ...], pools: dict, what: str) -> list[str]:
    """n unique messages: a framing drawn at random among those with room left, then one of its fillings.

    Each framing's fillings are numbered (mixed radix over the pools its fields use), so the capacity is
    exact and no filling is tried twice. pools: "unit" / "question" hold (text, subject) pairs, "also" the
    texts a second description may be (never the first one again), the rest plain texts.
    """
    specs = []
    for framing in framings:
        fields = [f for _, f, _, _ in Formatter().parse(framing) if f]
        sizes = [len(pools["unit" if f in ("clause", "pron") else f]) - (f == "also") for f in fields]
        specs.append((framing, fields, sizes, math.prod(sizes)))
    capacity = sum(spec[3] for spec in specs)
    if not 0 <= n <= capacity:
        raise ValueError(f"{what}: asked for {n} unique messages, but the generator can make 0 to {capacity}")
    tried: list[set[int]] = [set() for _ in specs]
    open_framings = [k for k, spec in enumerate(specs) if spec[3]]
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        if not open_framings:
            raise ValueError(f"{what}: asked for {n} unique messages, but only {len(out)} came out distinct")
        k = rng.choice(open_framings)
        framing, fields, sizes, size = specs[k]
        index = rng.randrange(size)
        if index in tried[k]:
            continue
        tried[k].add(index)
        if len(tried[k]) == size:
            open_framings.remove(k)
        digits = {}
        for field, base in zip(fields, sizes):
            index, digits[field] = divmod(index, base)
        unit = next((f for f in ("clause", "pron", "question") if f in digits), None)
        text, person = (
            pools["question" if unit == "question" else "unit"][digits[unit]] if unit else ("", SELF)
        )
        values = {}
        for field, digit in digits.items():
            if field in ("clause", "question"):
                values[field] = text
            elif field in ("pron", "also"):
                said = text if field == "pron" else [t for t in pools["also"] if t != text][digit]
                values[field] = _FIRST.sub(lambda m: _LATER[m.group()], said)
            else:
                values[field] = pools[field][digit]
        message = framing.format(**values).format(**person)
        message = _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), message)
        if message not in seen:
            seen.add(message)
            out.append(message)
    return out


def emergency_messages(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n unique (category, message) pairs, balanced over CATEGORIES (round robin), seeded.

    Message i is of category ``CATEGORIES[i % len(CATEGORIES)]``. Raises ValueError when a category
    cannot supply its share of unique messages.
    """
    rng = random.Random(seed)
    per_category = []
    for k, category in enumerate(CATEGORIES):
        spec = EMERGENCIES[category]
        who = WHO[spec["who"]]
        others = tuple(p for p in who if p is not SELF)
        pools = {
            "unit": _units(spec["symptoms"], who) + _units(spec["about_others"], others),
            "also": spec["symptoms"],
            "context": CONTEXTS,
            "timing": spec.get("timings", EMERGENCY_TIMINGS),
            "ask": EMERGENCY_ASKS,
            "fragment": spec["fragments"],
        }
        count = n // len(CATEGORIES) + (k < n % len(CATEGORIES))
        per_category.append(
            _draw(rng, count, EMERGENCY_FRAMINGS, pools, f"emergency_messages({n}), {category}")
        )
    return [
        (CATEGORIES[i % len(CATEGORIES)], per_category[i % len(CATEGORIES)][i // len(CATEGORIES)])
        for i in range(n)
    ]


def benign_messages(n: int, seed: int = 0) -> list[str]:
    """n unique ordinary consultation turns (not emergencies), seeded.

    A third of them (``n // 3``) are near misses that share an emergency's words; the rest are everyday
    complaints and questions. Raises ValueError when either part cannot supply its share uniquely.
    """
    rng = random.Random(seed)
    messages = []
    for what, groups, count in (
        ("ordinary turns", ORDINARY, n - n // 3),
        ("near misses", NEAR_MISSES, n // 3),
    ):
        units = [u for who, texts in groups.items() for u in _units(texts, WHO[who])]
        pools = {
            "unit": [u for u in units if not u[0].endswith("?")],
            "question": [u for u in units if u[0].endswith("?")],
            "context": CONTEXTS,
            "timing": BENIGN_TIMINGS,
            "ask": BENIGN_ASKS,
        }
        messages += _draw(rng, count, BENIGN_FRAMINGS, pools, f"benign_messages({n}), {what}")
    rng.shuffle(messages)
    return messages

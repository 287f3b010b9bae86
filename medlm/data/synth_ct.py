"""Synthetic chest CT volumes with planted CT-RATE abnormalities and matching reports.

Each case is a chest-like volume in Hounsfield units (air, fat, soft tissue, lung, bone) drawn in
physical coordinates, so that a case's spacing (jittered around the base spacing for ``shape``)
changes how many voxels the anatomy covers, as in real scans. Present abnormalities are planted
with a class-specific appearance, and the report mentions exactly the present ones (with varied
phrasing) plus negations for a few absent ones. Everything is deterministic given the seed.

Axis order everywhere is (D, H, W) = (superior->inferior, anterior->posterior, right->left) and
``spacing`` is given in the same order, in mm.
"""

from __future__ import annotations

import numpy as np

from medlm.data.schema import CT_RATE_CLASSES  # the 18 CT-RATE abnormality classes (the row schema's labels)

# Prevalence per class (roughly CT-RATE's ordering of frequent vs rare findings; ~1.8 findings per case,
# so that a spoken report stays around 5-12 s).
PREVALENCE = np.array(
    [
        0.10,
        0.15,
        0.09,
        0.07,
        0.13,
        0.08,
        0.13,
        0.10,
        0.11,
        0.17,
        0.15,
        0.11,
        0.08,
        0.07,
        0.07,
        0.08,
        0.07,
        0.07,
    ]
)

FIELD_OF_VIEW_MM = 360.0  # physical extent covered by ``shape`` at the base spacing, every axis
SPLITS = (("train", 0.7), ("val", 0.15), ("test", 0.15))

AIR, FAT, SOFT, BLOOD, LUNG, BONE, FLUID, METAL = -1000, -100, 45, 40, -850, 700, 10, 3000

# Every finding has a fixed, class-specific place (its own lung zone, or its own mediastinal / cardiac
# structure) and a distinct attenuation or texture, large enough to fill about one CTViT patch at
# 16 x 32 x 32, so that each class is visible at the tiny preset's resolution. The phrasing names that place.
POSITIVE: dict[str, list[str]] = {
    "Medical material": [
        "A pacemaker lead is seen.",
        "Medical material: a cardiac device.",
        "There is a cardiac device lead.",
    ],
    "Arterial wall calcification": [
        "The aortic wall is calcified.",
        "Aortic wall calcification is noted.",
        "There are calcified aortic plaques.",
    ],
    "Cardiomegaly": ["The heart is enlarged.", "Cardiac size is increased.", "There is cardiomegaly."],
    "Pericardial effusion": [
        "There is fluid around the heart.",
        "A pericardial effusion is seen.",
        "Pericardial fluid, {mm} mm thick.",
    ],
    "Coronary artery wall calcification": [
        "The coronary arteries are calcified.",
        "There is coronary calcification.",
        "Coronary plaques are seen.",
    ],
    "Hiatal hernia": [
        "There is a hiatal hernia.",
        "A sliding hiatal hernia is seen.",
        "Hiatal hernia at the hiatus.",
    ],
    "Lymphadenopathy": [
        "Mediastinal nodes are enlarged.",
        "A {mm} mm mediastinal node is seen.",
        "There is mediastinal lymphadenopathy.",
    ],
    "Emphysema": [
        "Right upper lobe emphysema.",
        "There is emphysema in the right apex.",
        "Emphysema is seen.",
    ],
    "Atelectasis": [
        "Left basal atelectasis.",
        "There is atelectasis at the left base.",
        "Atelectasis is seen.",
    ],
    "Lung nodule": [
        "A {mm} mm left lung nodule.",
        "There is a nodule in the left lung.",
        "A lung nodule is seen.",
    ],
    "Lung opacity": [
        "Right ground glass opacity.",
        "There is a right lung opacity.",
        "A lung opacity is seen.",
    ],
    "Pulmonary fibrotic sequela": [
        "Right apical fibrotic bands.",
        "There are fibrotic sequelae.",
        "Fibrotic sequela at the right apex.",
    ],
    "Pleural effusion": [
        "A right pleural effusion.",
        "There is a right pleural effusion.",
        "Pleural fluid on the right.",
    ],
    "Mosaic attenuation pattern": [
        "Mosaic attenuation, left upper lobe.",
        "There is mosaic attenuation.",
        "A mosaic pattern is seen.",
    ],
    "Peribronchial thickening": [
        "Left peribronchial thickening.",
        "The bronchial walls are thickened.",
        "There is peribronchial thickening.",
    ],
    "Consolidation": [
        "Right basal consolidation.",
        "There is consolidation at the right base.",
        "A consolidation is seen.",
    ],
    "Bronchiectasis": ["Right bronchiectasis.", "There are dilated bronchi.", "Bronchiectasis is seen."],
    "Interlobular septal thickening": [
        "Left apical septal thickening.",
        "The interlobular septa are thickened.",
        "There is septal thickening.",
    ],
}

NEGATIVE: dict[str, list[str]] = {
    name: [f"No {name.lower()}.", f"There is no {name.lower()}.", f"{name} is not present."]
    for name in CT_RATE_CLASSES
}

NORMAL_SENTENCES = ("The airways are patent.", "The bones are intact.", "The thyroid is normal.")

# Lung zones: (side, level, half) -> a class. side -1 = right (x < 0), +1 = left; level by z (upper /
# middle / lower third of the lung); half by y (anterior / posterior).
_ZONES = {
    "Emphysema": (-1, 0, 0),
    "Pulmonary fibrotic sequela": (-1, 0, 1),
    "Mosaic attenuation pattern": (1, 0, 0),
    "Interlobular septal thickening": (1, 0, 1),
    "Lung opacity": (-1, 1, 0),
    "Bronchiectasis": (-1, 1, 1),
    "Lung nodule": (1, 1, 0),
    "Peribronchial thickening": (1, 1, 1),
    "Consolidation": (-1, 2, 0),
    "Pleural effusion": (-1, 2, 1),
    "Atelectasis": (1, 2, 0),
}
_LEVELS = ((-0.9, -0.3), (-0.3, 0.3), (0.3, 0.9))


def base_spacing(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """Spacing (mm) at which ``shape`` covers the synthetic field of view (360 mm every axis)."""
    return tuple(FIELD_OF_VIEW_MM / s for s in shape)  # type: ignore[return-value]


class _Canvas:
    """A volume plus normalized physical coordinates (-1..1 at the base spacing)."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
        half = FIELD_OF_VIEW_MM / 2
        axes = [(np.arange(n) - (n - 1) / 2) * sp / half for n, sp in zip(shape, spacing)]
        self.z, self.y, self.x = np.meshgrid(*axes, indexing="ij", sparse=True)
        self.vol = np.full(shape, AIR, dtype=np.float32)

    def ellipsoid(self, c, r) -> np.ndarray:
        return ((self.x - c[0]) / r[0]) ** 2 + ((self.y - c[1]) / r[1]) ** 2 + (
            (self.z - c[2]) / r[2]
        ) ** 2 <= 1

    def cylinder(self, c, r, z0=-2.0, z1=2.0) -> np.ndarray:
        inside = ((self.x - c[0]) / r[0]) ** 2 + ((self.y - c[1]) / r[1]) ** 2 <= 1
        return inside & (self.z >= z0) & (self.z <= z1)

    def paint(self, mask: np.ndarray, hu: float) -> None:
        self.vol[np.broadcast_to(mask, self.vol.shape)] = hu


def _lung_masks(cv: _Canvas, heart_r: float):
    lungs = []
    for side in (-1, 1):
        m = cv.ellipsoid((0.4 * side, 0.02, 0.0), (0.27, 0.4, 0.85))
        lungs.append(m & ~cv.ellipsoid((0.08, -0.1, 0.3), (heart_r + 0.04, heart_r, 0.4)))
    return lungs


def _render(rng: np.random.Generator, labels: np.ndarray, shape, spacing) -> np.ndarray:
    cv = _Canvas(shape, spacing)
    has = {name: bool(labels[i]) for i, name in enumerate(CT_RATE_CLASSES)}
    body_z = (cv.z >= -0.98) & (cv.z <= 0.98)
    cv.paint(cv.cylinder((0, 0), (0.88, 0.62)) & body_z, FAT)
    cv.paint(cv.cylinder((0, 0), (0.82, 0.56)) & body_z, SOFT)
    ring = cv.cylinder((0, 0), (0.8, 0.54)) & ~cv.cylinder((0, 0), (0.74, 0.48)) & body_z
    cv.paint(ring & (np.cos(cv.z * 18) > 0.3), BONE)  # ribs
    heart_r = 0.34 if has["Cardiomegaly"] else 0.25
    lungs = _lung_masks(cv, heart_r)
    lung_any = lungs[0] | lungs[1]
    cv.paint(lung_any, LUNG)
    vessels = (np.sin(cv.x * 23 + rng.uniform(0, 6.3)) * np.sin(cv.y * 19) * np.sin(cv.z * 17)) > 0.45
    cv.paint(lung_any & vessels, -600)  # normal lung: air with some vessel texture
    cv.paint(cv.cylinder((0, -0.08), (0.12, 0.3), -0.9, 0.0), FAT)  # mediastinal fat
    cv.paint(cv.cylinder((0, -0.08), (0.06, 0.06), -1.0, -0.1), AIR)  # trachea
    cv.paint(cv.cylinder((0.05, 0.28), (0.07, 0.07)), BLOOD)  # descending aorta
    cv.paint(cv.cylinder((0, 0.47), (0.1, 0.08)), BONE)  # spine
    heart = cv.ellipsoid((0.08, -0.1, 0.3), (heart_r, heart_r * 0.9, 0.35))
    if has["Pericardial effusion"]:  # a thick low-attenuation rim around the heart, displacing lung
        cv.paint(cv.ellipsoid((0.08, -0.1, 0.3), (heart_r + 0.13, heart_r * 0.9 + 0.13, 0.48)), FLUID - 200)
    cv.paint(heart, BLOOD)

    def zone(name: str) -> np.ndarray:
        side, level, half = _ZONES[name]
        z0, z1 = _LEVELS[level]
        m = lungs[0 if side < 0 else 1] & (cv.z >= z0) & (cv.z < z1)
        return m & ((cv.y < 0.02) if half == 0 else (cv.y >= 0.02))

    def centre(name: str) -> tuple[float, float, float]:
        side, level, half = _ZONES[name]
        return 0.4 * side, (-0.18, 0.22)[half], float(np.mean(_LEVELS[level]))

    def jit():  # small positional jitter, well inside the zone
        return rng.uniform(-0.03, 0.03)

    if has["Medical material"]:  # generator in the left anterior chest wall, lead into the heart
        cv.paint(cv.cylinder((0.3, -0.35), (0.07, 0.07), -0.8, 0.3), METAL)
        cv.paint(cv.ellipsoid((0.55, -0.5, -0.7), (0.16, 0.1, 0.22)), METAL)
    if has["Arterial wall calcification"]:
        ring = cv.cylinder((0.05, 0.28), (0.14, 0.14), -0.8, 0.8) & ~cv.cylinder((0.05, 0.28), (0.07, 0.07))
        cv.paint(ring & (np.cos(cv.z * 6 + rng.uniform(0, 2 * np.pi)) > -0.5), 900)  # calcified aortic wall
    if has["Coronary artery wall calcification"]:  # plaques along the anterior-left heart surface
        for ang in (1.15 * np.pi, 1.4 * np.pi, 1.65 * np.pi):
            c = (0.08 + heart_r * np.cos(ang), -0.1 + heart_r * 0.9 * np.sin(ang), 0.2 + jit())
            cv.paint(cv.ellipsoid(c, (0.1, 0.1, 0.16)), 950)
    if has["Hiatal hernia"]:  # a gas-filled sac below the heart, behind it
        cv.paint(cv.ellipsoid((0.0, 0.2, 0.72), (0.28, 0.2, 0.24)), SOFT + 30)
        cv.paint(cv.ellipsoid((0.0, 0.2, 0.72), (0.22, 0.15, 0.2)), AIR + 100)
    if has["Lymphadenopathy"]:  # enlarged nodes in the upper mediastinum
        for c in ((-0.07, -0.25, -0.45), (0.07, 0.12, -0.35)):
            cv.paint(cv.ellipsoid((c[0] + jit(), c[1], c[2]), (0.12, 0.12, 0.18)), SOFT + 120)
    if has["Emphysema"]:  # destroyed parenchyma: no vessels, dark bullae
        cv.paint(zone("Emphysema"), -1000)
    if has["Pulmonary fibrotic sequela"]:  # dense bands
        band = np.abs(np.sin((cv.x + 0.5 * cv.y) * 18)) < 0.7
        cv.paint(zone("Pulmonary fibrotic sequela") & band, -50)
    if has["Mosaic attenuation pattern"]:  # alternating dark and grey lobules
        z = zone("Mosaic attenuation pattern")
        check = (np.sin(cv.x * 16) * np.sin(cv.y * 16) * np.sin(cv.z * 12)) > 0
        cv.paint(z & check, -450)
        cv.paint(z & ~check, -1000)
    if has["Interlobular septal thickening"]:  # a fine grid of thickened septa
        grid = (np.abs(np.sin(cv.x * 20)) < 0.5) | (np.abs(np.sin(cv.y * 20)) < 0.5)
        cv.paint(zone("Interlobular septal thickening") & grid, -150)
    if has["Lung opacity"]:  # ground glass: hazy grey
        c = centre("Lung opacity")
        cv.paint(zone("Lung opacity") & cv.ellipsoid((c[0] + jit(), c[1], c[2]), (0.22, 0.24, 0.4)), -450)
    if has["Bronchiectasis"]:  # a dilated, air-filled airway with a thin wall
        c = centre("Bronchiectasis")
        cv.paint(zone("Bronchiectasis") & cv.cylinder((c[0], c[1]), (0.16, 0.16)), SOFT - 20)
        cv.paint(zone("Bronchiectasis") & cv.cylinder((c[0], c[1]), (0.12, 0.12)), AIR)
    if has["Lung nodule"]:  # a solid round nodule
        c = centre("Lung nodule")
        cv.paint(cv.ellipsoid((c[0] + jit(), c[1] + jit(), c[2]), (0.14, 0.14, 0.22)) & lungs[1], 100)
    if has["Peribronchial thickening"]:  # a thick soft-tissue cuff around a normal-calibre airway
        c = centre("Peribronchial thickening")
        cv.paint(zone("Peribronchial thickening") & cv.cylinder((c[0], c[1]), (0.15, 0.15)), SOFT + 20)
        cv.paint(zone("Peribronchial thickening") & cv.cylinder((c[0], c[1]), (0.04, 0.04)), AIR)
    if has["Consolidation"]:  # dense airless lung with an air bronchogram
        c = centre("Consolidation")
        cv.paint(zone("Consolidation"), SOFT - 10)
        cv.paint(zone("Consolidation") & cv.cylinder((c[0], c[1]), (0.04, 0.04)), AIR)
    if has["Pleural effusion"]:  # dependent fluid
        cv.paint(zone("Pleural effusion"), FLUID)
    if has["Atelectasis"]:  # collapsed lung: a dense plate
        c = centre("Atelectasis")
        cv.paint(zone("Atelectasis") & (np.abs(cv.z - c[2]) < 0.25), 20)

    vol = cv.vol + rng.normal(0, 15, cv.vol.shape).astype(np.float32)
    return np.clip(np.rint(vol), -1024, 3071).astype(np.int16)


def _report(rng: np.random.Generator, labels: np.ndarray) -> str:
    def fill(t: str) -> str:
        return t.format(mm=int(rng.integers(5, 25)))

    present = [n for i, n in enumerate(CT_RATE_CLASSES) if labels[i]]
    absent = [n for i, n in enumerate(CT_RATE_CLASSES) if not labels[i]]
    findings = [fill(POSITIVE[n][rng.integers(3)]) for n in present]
    if (
        absent
    ):  # one negation, worded as the zero-shot "absent" prompt, so that the text side learns the contrast
        findings.append(NEGATIVE[absent[rng.integers(len(absent))]][2])
    if not present:
        findings.append(NORMAL_SENTENCES[rng.integers(len(NORMAL_SENTENCES))])
    order = rng.permutation(len(findings))
    text = "Findings: " + " ".join(findings[k] for k in order)
    if present:  # the impression states each finding as CT-CLIP's zero-shot prompts do ("{X} is present.")
        text += " Impression: " + " ".join(f"{n} is present." for n in present)
    else:
        text += " Impression: No acute abnormality."
    return text


def generate_ct_cases(n: int, shape: tuple[int, int, int] = (16, 32, 32), seed: int = 0) -> list[dict]:
    """``n`` synthetic cases ``{id, volume, spacing, labels, report, split}``, deterministic by seed.

    ``volume`` is int16 HU of exactly ``shape`` (D, H, W); ``spacing`` (mm, same order) is the base
    spacing for ``shape`` jittered by up to 10% per axis, so preprocessing has real resampling to do.
    ``split`` is train / val / test in 70 / 15 / 15 proportions (exact counts, shuffled by seed).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes >= 8 (D, H, W), got {shape}")
    rng = np.random.default_rng(seed)
    n_train, n_val = round(n * SPLITS[0][1]), round(n * SPLITS[1][1])
    split_of = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val))[
        rng.permutation(n)
    ]
    base = base_spacing(tuple(shape))
    cases = []
    for i in range(n):
        case_rng = np.random.default_rng([seed, i])
        labels = (case_rng.random(len(CT_RATE_CLASSES)) < PREVALENCE).astype(np.int8)
        spacing = tuple(float(round(b * case_rng.uniform(0.9, 1.1), 4)) for b in base)
        volume = _render(case_rng, labels, tuple(shape), spacing)
        cases.append(
            {
                "id": f"ct-{seed}-{i:05d}",
                "volume": volume,
                "spacing": spacing,
                "labels": labels,
                "report": _report(case_rng, labels),
                "split": str(split_of[i]),
            }
        )
    return cases

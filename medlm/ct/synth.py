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

# Prevalence per class (roughly CT-RATE's ordering of frequent vs rare findings).
PREVALENCE = np.array([0.20, 0.30, 0.15, 0.12, 0.25, 0.15, 0.25, 0.20, 0.22, 0.35,
                       0.30, 0.22, 0.15, 0.12, 0.12, 0.15, 0.12, 0.10])

FIELD_OF_VIEW_MM = 360.0  # physical extent covered by ``shape`` at the base spacing, every axis
SPLITS = (("train", 0.7), ("val", 0.15), ("test", 0.15))

AIR, FAT, SOFT, BLOOD, LUNG, BONE, FLUID, METAL = -1000, -100, 45, 40, -850, 700, 10, 3000

_LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe")

POSITIVE: dict[str, list[str]] = {
    "Medical material": ["Medical material is seen: a cardiac device lead courses into the heart.",
                         "Medical material consistent with a pacemaker lead is noted.",
                         "There is medical material in the chest wall and heart."],
    "Arterial wall calcification": ["Arterial wall calcification is present in the thoracic aorta.",
                                    "Atherosclerotic arterial wall calcification of the aorta is noted.",
                                    "There are calcified plaques in the aortic arterial wall."],
    "Cardiomegaly": ["Cardiomegaly is present.", "The heart is enlarged, consistent with cardiomegaly.",
                     "Cardiac size is increased (cardiomegaly)."],
    "Pericardial effusion": ["A pericardial effusion is present.",
                             "There is fluid around the heart consistent with pericardial effusion.",
                             "Pericardial effusion measuring {mm} mm in thickness is seen."],
    "Coronary artery wall calcification": ["Coronary artery wall calcification is present.",
                                           "Calcified plaques are seen in the coronary artery walls.",
                                           "There is coronary artery calcification."],
    "Hiatal hernia": ["A hiatal hernia is present.", "There is a small sliding hiatal hernia.",
                      "Hiatal hernia is noted at the esophageal hiatus."],
    "Lymphadenopathy": ["Mediastinal lymphadenopathy is present, the largest node measuring {mm} mm.",
                        "Enlarged mediastinal lymph nodes are seen, consistent with lymphadenopathy.",
                        "There is lymphadenopathy in the mediastinum."],
    "Emphysema": ["Centrilobular emphysema is seen in both lungs.", "There are emphysematous changes.",
                  "Emphysema is present, most marked in the upper lobes."],
    "Atelectasis": ["Atelectasis is seen in the {lobe}.", "There is subsegmental atelectasis in the {lobe}.",
                    "Linear atelectasis is noted at the lung bases."],
    "Lung nodule": ["A {mm} mm lung nodule is seen in the {lobe}.",
                    "There is a solid pulmonary nodule in the {lobe} measuring {mm} mm.",
                    "Lung nodule noted in the {lobe}."],
    "Lung opacity": ["Ground glass lung opacity is seen in the {lobe}.",
                     "There are patchy lung opacities in the {lobe}.",
                     "A ground-glass opacity is present in the {lobe}."],
    "Pulmonary fibrotic sequela": ["Pulmonary fibrotic sequelae are seen in the {lobe}.",
                                   "There are fibrotic sequela changes in the {lobe}.",
                                   "Fibrotic bands consistent with pulmonary fibrotic sequela are noted."],
    "Pleural effusion": ["A {side} pleural effusion is present.",
                         "There is {side} pleural effusion with adjacent compression.",
                         "Pleural effusion is seen on the {side} side."],
    "Mosaic attenuation pattern": ["A mosaic attenuation pattern is seen in both lungs.",
                                   "There is mosaic attenuation of the lung parenchyma.",
                                   "Mosaic attenuation pattern is present."],
    "Peribronchial thickening": ["Peribronchial thickening is present.",
                                 "There is bronchial wall and peribronchial thickening.",
                                 "Peribronchial thickening is seen in the lower lobes."],
    "Consolidation": ["Consolidation is seen in the {lobe}.",
                      "There is a dense consolidation with air bronchograms in the {lobe}.",
                      "Consolidation areas are present in the {lobe}."],
    "Bronchiectasis": ["Bronchiectasis is seen in the {lobe}.", "There are dilated bronchi (bronchiectasis).",
                       "Cylindrical bronchiectasis is present."],
    "Interlobular septal thickening": ["Interlobular septal thickening is present.",
                                       "There is smooth interlobular septal thickening.",
                                       "Interlobular septal thickening is seen at the lung periphery."],
}

NEGATIVE: dict[str, list[str]] = {
    name: [f"No {name.lower()} is seen.", f"There is no {name.lower()}.", f"{name} is not present."]
    for name in CT_RATE_CLASSES
}

NORMAL_SENTENCES = ("Trachea and both main bronchi are patent.", "The thoracic esophagus is normal in calibre.",
                    "No acute osseous abnormality is seen.", "Thyroid gland is unremarkable.",
                    "The visualized upper abdominal organs are unremarkable.")


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
        return ((self.x - c[0]) / r[0]) ** 2 + ((self.y - c[1]) / r[1]) ** 2 + ((self.z - c[2]) / r[2]) ** 2 <= 1

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
    for lung in lungs:
        cv.paint(lung, LUNG)
    lung_any = lungs[0] | lungs[1]
    cv.paint(cv.cylinder((0, -0.08), (0.12, 0.3), -0.9, 0.0), FAT)  # mediastinal fat
    cv.paint(cv.cylinder((0, -0.08), (0.06, 0.06), -1.0, -0.1), AIR)  # trachea
    cv.paint(cv.cylinder((0.05, 0.28), (0.07, 0.07)), BLOOD)  # descending aorta
    cv.paint(cv.cylinder((0, 0.47), (0.1, 0.08)), BONE)  # spine
    heart = cv.ellipsoid((0.08, -0.1, 0.3), (heart_r, heart_r * 0.9, 0.35))
    if has["Pericardial effusion"]:  # a thick low-attenuation rim around the heart
        cv.paint(cv.ellipsoid((0.08, -0.1, 0.3), (heart_r + 0.14, heart_r * 0.9 + 0.14, 0.5)) & ~lung_any, FLUID - 200)
    cv.paint(heart, BLOOD)

    def lung_point(lung: np.ndarray) -> tuple[float, float, float]:
        idx = np.argwhere(np.broadcast_to(lung, cv.vol.shape))
        z, y, x = idx[rng.integers(len(idx))]
        return float(np.ravel(cv.x)[x]), float(np.ravel(cv.y)[y]), float(np.ravel(cv.z)[z])

    def blob(center, radius, hu, within=None):
        m = cv.ellipsoid(center, (radius, radius, radius * 1.5))
        cv.paint(m if within is None else m & within, hu)

    side = int(rng.integers(2))
    if has["Medical material"]:
        cv.paint(cv.cylinder((0.3, -0.35), (0.07, 0.07), -0.8, 0.3), METAL)
        blob((0.45, -0.5, -0.7), 0.14, METAL)
    if has["Arterial wall calcification"]:
        ring = cv.cylinder((0.05, 0.28), (0.14, 0.14), -0.8, 0.8) & ~cv.cylinder((0.05, 0.28), (0.07, 0.07))
        cv.paint(ring & (np.cos(cv.z * 6 + rng.uniform(0, 2 * np.pi)) > -0.5), 900)  # calcified aortic wall
    if has["Coronary artery wall calcification"]:
        for _ in range(3):
            ang = rng.uniform(np.pi, 2 * np.pi)
            blob((0.08 + heart_r * np.cos(ang), -0.1 + heart_r * 0.9 * np.sin(ang), rng.uniform(0.1, 0.4)),
                 0.1, 950)
    if has["Hiatal hernia"]:
        blob((0.0, 0.3, 0.75), 0.16, SOFT)
        blob((0.0, 0.3, 0.75), 0.1, AIR + 100)
    if has["Lymphadenopathy"]:
        for _ in range(2):
            blob((rng.uniform(-0.08, 0.08), rng.uniform(-0.2, 0.0), rng.uniform(-0.6, -0.2)), 0.14, SOFT + 120)
    if has["Emphysema"]:
        for _ in range(6):
            blob(lung_point(lung_any & (cv.z < 0.2)), 0.16, -1000, lung_any)
    if has["Mosaic attenuation pattern"]:
        cv.paint(lung_any & ((np.sin(cv.x * 14) * np.sin(cv.y * 14) * np.sin(cv.z * 10)) > 0), -680)
    if has["Interlobular septal thickening"]:
        grid = (np.abs(np.sin(cv.x * 20)) < 0.25) | (np.abs(np.sin(cv.y * 20)) < 0.25)
        cv.paint(lung_any & grid & ~cv.cylinder((0, 0), (0.6, 0.4)), -250)
    if has["Pulmonary fibrotic sequela"]:
        for _ in range(3):
            c = lung_point(lung_any)
            band = (np.abs((cv.x - c[0]) + 0.5 * (cv.y - c[1])) < 0.08) & cv.ellipsoid(c, (0.3, 0.3, 0.35))
            cv.paint(band & lung_any, -100)
    if has["Lung opacity"]:
        for _ in range(2):
            blob(lung_point(lung_any), 0.22, -400, lung_any)
    if has["Peribronchial thickening"] or has["Bronchiectasis"]:
        airway_r = 0.09 if has["Bronchiectasis"] else 0.04
        wall = 0.06 if has["Peribronchial thickening"] else 0.02
        for sx in (-0.3, 0.3):
            cv.paint(cv.cylinder((sx, 0.0), (airway_r + wall, airway_r + wall), -0.3, 0.6), SOFT - 20)
            cv.paint(cv.cylinder((sx, 0.0), (airway_r, airway_r), -0.3, 0.6), AIR)
    if has["Consolidation"]:
        c = lung_point(lungs[side])
        cv.paint(cv.ellipsoid(c, (0.26, 0.26, 0.36)) & lungs[side], SOFT - 10)
        cv.paint(cv.cylinder((c[0], c[1]), (0.05, 0.05), c[2] - 0.25, c[2] + 0.25) & lungs[side], AIR)
    if has["Atelectasis"]:
        cv.paint(lungs[1 - side] & (cv.y > 0.15) & (cv.z > 0.1), 20)
    if has["Pleural effusion"]:
        cv.paint(lungs[side] & (cv.y > 0.12), FLUID)
    if has["Lung nodule"]:
        for _ in range(int(rng.integers(1, 3))):
            blob(lung_point(lung_any), 0.12, 100, lung_any)

    vol = cv.vol + rng.normal(0, 15, cv.vol.shape).astype(np.float32)
    return np.clip(np.rint(vol), -1024, 3071).astype(np.int16)


def _report(rng: np.random.Generator, labels: np.ndarray) -> str:
    def fill(t: str) -> str:
        return t.format(lobe=_LOBES[rng.integers(len(_LOBES))], mm=int(rng.integers(4, 25)),
                        side=("right", "left", "bilateral")[rng.integers(3)])

    present = [n for i, n in enumerate(CT_RATE_CLASSES) if labels[i]]
    absent = [n for i, n in enumerate(CT_RATE_CLASSES) if not labels[i]]
    findings = [fill(POSITIVE[n][rng.integers(3)]) for n in present]
    for j in rng.choice(len(absent), size=min(len(absent), int(rng.integers(1, 4))), replace=False):
        findings.append(NEGATIVE[absent[j]][rng.integers(3)])
    findings.append(NORMAL_SENTENCES[rng.integers(len(NORMAL_SENTENCES))])
    order = rng.permutation(len(findings))
    text = "Findings: " + " ".join(findings[k] for k in order)
    if present:  # the impression states each finding as CT-CLIP's zero-shot prompts do ("{X} is present.")
        text += " Impression: " + " ".join(f"{n} is present." for n in present)
    else:
        text += " Impression: No acute cardiopulmonary abnormality."
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
    split_of = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val))[rng.permutation(n)]
    base = base_spacing(tuple(shape))
    cases = []
    for i in range(n):
        case_rng = np.random.default_rng([seed, i])
        labels = (case_rng.random(len(CT_RATE_CLASSES)) < PREVALENCE).astype(np.int8)
        spacing = tuple(float(round(b * case_rng.uniform(0.9, 1.1), 4)) for b in base)
        volume = _render(case_rng, labels, tuple(shape), spacing)
        cases.append({"id": f"ct-{seed}-{i:05d}", "volume": volume, "spacing": spacing, "labels": labels,
                      "report": _report(case_rng, labels), "split": str(split_of[i])})
    return cases

"""CT volume loading and the CT-CLIP preprocessing contract.

Pinned (tests check it on volumes with known HU values): HU clipped to [-1000, 1000] and scaled by
1/1000, resampled (trilinear) from the scan's spacing to ``target_spacing``, then centre-cropped or
padded (with -1, i.e. air) to ``target_shape``. Axis order is (D, H, W) = (axial slices, rows,
columns) and spacing is given in the same order (CT-CLIP's 0.75 x 0.75 x 1.5 mm is (1.5, 0.75, 0.75)).
"""

from __future__ import annotations

import io

import numpy as np
from pydantic import field_validator

from medlm import storage
from medlm.config import Section

HU_MIN, HU_MAX, HU_SCALE = -1000.0, 1000.0, 1000.0
PAD_VALUE = HU_MIN / HU_SCALE


class VolumeSpec(Section):
    """Target geometry of preprocessed volumes (the ``full`` preset is CT-CLIP's)."""

    target_shape: tuple[int, int, int] = (240, 480, 480)
    target_spacing: tuple[float, float, float] = (1.5, 0.75, 0.75)

    @field_validator("target_shape")
    @classmethod
    def _positive_shape(cls, v):
        if min(v) < 1:
            raise ValueError(f"target_shape must be positive, got {v}")
        return v

    @field_validator("target_spacing")
    @classmethod
    def _positive_spacing(cls, v):
        if min(v) <= 0:
            raise ValueError(f"target_spacing must be positive, got {v}")
        return v


def _check_spacing(spacing) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise ValueError(f"spacing must be 3 positive mm values (D, H, W), got {spacing}")
    return sp  # type: ignore[return-value]


def normalize_hu(volume: np.ndarray) -> np.ndarray:
    """HU -> float32 in [-1, 1]: clip to [-1000, 1000], divide by 1000."""
    return (np.clip(np.asarray(volume, dtype=np.float32), HU_MIN, HU_MAX) / HU_SCALE).astype(np.float32)


def resample_volume(volume: np.ndarray, spacing, target_spacing) -> np.ndarray:
    """Trilinear resampling of a (D, H, W) float volume from ``spacing`` to ``target_spacing`` (mm)."""
    import torch
    import torch.nn.functional as F

    spacing, target_spacing = _check_spacing(spacing), _check_spacing(target_spacing)
    size = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(volume.shape, spacing, target_spacing))
    if size == volume.shape:
        return volume
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)[0, 0].numpy()


def crop_or_pad(volume: np.ndarray, shape, pad_value: float = PAD_VALUE) -> np.ndarray:
    """Centre-crop or pad (with ``pad_value``) every axis of ``volume`` to ``shape``."""
    out = np.full(tuple(shape), pad_value, dtype=np.float32)
    src, dst = [], []
    for n, t in zip(volume.shape, shape):
        if n >= t:
            start = (n - t) // 2
            src.append(slice(start, start + t))
            dst.append(slice(0, t))
        else:
            start = (t - n) // 2
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def preprocess_volume(volume: np.ndarray, spacing, spec: VolumeSpec) -> np.ndarray:
    """A HU volume (D, H, W) at ``spacing`` -> float32 ``spec.target_shape`` in [-1, 1] (the model input)."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"a CT volume must be 3-D (D, H, W), got shape {volume.shape}")
    if volume.size == 0 or not np.issubdtype(volume.dtype, np.number):
        raise ValueError(f"a CT volume must be a non-empty numeric array, got {volume.dtype} {volume.shape}")
    if not np.all(np.isfinite(volume)):
        raise ValueError("CT volume contains NaN or inf")
    x = normalize_hu(volume)
    x = resample_volume(x, spacing, spec.target_spacing)
    return crop_or_pad(x, spec.target_shape)


def load_volume(uri: str, spacing=None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a CT volume (local path or ``s3://``) -> (HU array (D, H, W), spacing in mm (D, H, W)).

    NIfTI (``.nii`` / ``.nii.gz``, via nibabel: voxel axes x, y, z become W, H, D, spacing from the
    header, scaling slope/intercept applied) or NumPy ``.npy`` (already D, H, W; ``spacing`` required).
    """
    name = str(uri).lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        data = storage.read_bytes(uri)  # pyarrow may already have decompressed .gz; check the magic bytes
        try:
            img = nib.Nifti1Image.from_bytes(_gunzip(data) if data[:2] == b"\x1f\x8b" else data)
        except Exception as e:
            raise ValueError(f"{uri}: not a readable NIfTI file ({type(e).__name__}: {e})") from None
        arr = np.asarray(img.get_fdata(dtype=np.float32))
        if arr.ndim != 3:
            raise ValueError(f"{uri}: expected a 3-D volume, got shape {arr.shape}")
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        vol = np.ascontiguousarray(arr.transpose(2, 1, 0))
        return vol, _check_spacing(spacing if spacing is not None else zooms[::-1])
    if name.endswith(".npy"):
        if spacing is None:
            raise ValueError(f"{uri}: a .npy volume carries no spacing; pass spacing=(d, h, w) in mm")
        vol = np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)
        if vol.ndim != 3:
            raise ValueError(f"{uri}: expected a 3-D volume, got shape {vol.shape}")
        return vol, _check_spacing(spacing)
    raise ValueError(f"{uri}: unsupported volume format (expected .nii, .nii.gz or .npy)")


def _gunzip(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data)


# --- shard rows -> training arrays (teacher, student, evaluation) -------------------------------------------


def speech_features(frontend, waveforms) -> dict:
    """Waveforms -> ``input_features`` (chunks, ...), ``frame_mask`` (chunks, frames: 1 where the encoder
    frame carries audio, 0 on the last chunk's padding) and ``chunks`` (chunk count per waveform), numpy
    only."""
    feats, per_item, lengths = frontend.features(list(waveforms), return_lengths=True)
    valid = np.array([frontend.encoder_frames(n) for n in lengths])
    mask = (np.arange(frontend.max_frames)[None, :] < valid[:, None]).astype(np.float32)
    return {"input_features": feats, "frame_mask": mask, "chunks": np.array(per_item, dtype=np.int64)}


def featurize_rows(
    rows: list[dict], volume: VolumeSpec, max_audio_seconds: float | None = None, frontend=None
) -> dict[str, np.ndarray]:
    """ct shard rows -> ``volume`` (N, D, H, W), ``labels``, ``report``, ``id`` and, with a frontend,
    ``input_features`` / ``frame_mask`` (object arrays, one (chunks, ...) array per row)."""
    from medlm.data.schema import check_ct_labels, decode_audio, unpack_volume

    out: dict[str, list] = {"id": [], "volume": [], "labels": [], "report": []}
    if frontend is not None:
        out.update(input_features=[], frame_mask=[])
    for row in rows:
        vol = unpack_volume(row["volume"], row["shape"])
        out["volume"].append(preprocess_volume(vol, row["spacing"], volume))
        out["labels"].append(check_ct_labels(row).astype(np.int8))
        out["report"].append(str(row["report"]))
        out["id"].append(str(row["id"]))
        if frontend is not None:
            wav = decode_audio(row["report_audio"], row["sample_rate"], max_audio_seconds)
            speech = speech_features(frontend, [wav])
            out["input_features"].append(speech["input_features"])
            out["frame_mask"].append(speech["frame_mask"])
    res = {
        "id": np.array(out["id"]),
        "report": np.array(out["report"]),
        "volume": np.stack(out["volume"]),
        "labels": np.stack(out["labels"]),
    }
    if frontend is not None:  # ragged (chunks, ...) arrays, one per row
        for k in ("input_features", "frame_mask"):
            res[k] = np.empty(len(rows), dtype=object)
            for i, v in enumerate(out[k]):
                res[k][i] = v
    return res

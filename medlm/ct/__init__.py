"""SpeechCT-CLIP: CT encoder, CT-CLIP teacher, speech student, synthetic CT volumes, retrieval.

Light imports only here (the serving and data layers import this package); models load lazily.
"""

from medlm.ct.index import CTEncoders, CTIndex
from medlm.ct.preprocess import VolumeSpec, load_volume, preprocess_volume
from medlm.ct.synth import CT_RATE_CLASSES, generate_ct_cases

__all__ = ["CT_RATE_CLASSES", "CTEncoders", "CTIndex", "VolumeSpec", "generate_ct_cases", "load_volume",
           "preprocess_volume"]

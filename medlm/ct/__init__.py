"""SpeechCT-CLIP: CT encoder, CT-CLIP teacher, speech student, retrieval (the synthetic CT volumes are data:
``medlm.data.synth_ct``).

Light imports only here (the serving layer imports this package); models load lazily.
"""

from medlm.ct.index import CTEncoders, CTIndex
from medlm.ct.preprocess import VolumeSpec, load_volume, preprocess_volume

__all__ = ["CTEncoders", "CTIndex", "VolumeSpec", "load_volume", "preprocess_volume"]

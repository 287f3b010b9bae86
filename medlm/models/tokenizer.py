"""A small byte-level BPE tokenizer with a ChatML template, for the tiny/small presets.

Trained deterministically with ``tokenizers`` on the embedded corpus below (no download), cached
under ``$MEDLM_HOME/tokenizers/<content hash>`` (:mod:`medlm.paths`) so every process gets the same ids.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

AUDIO_TOKEN = "<|audio|>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", AUDIO_TOKEN]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """\
You are a careful medical assistant. Answer briefly and say when a doctor should be seen.
The patient presents with acute chest pain radiating to the left arm and shortness of breath.
She has a history of hypertension, type two diabetes and hyperlipidemia.
He was given 325 milligrams of aspirin and sublingual nitroglycerin in the emergency department.
Blood pressure is 142 over 91, heart rate 104, temperature 38.2 degrees, oxygen saturation 94 percent.
The CT scan of the chest shows a small pleural effusion and bibasilar atelectasis. No pulmonary embolism.
Findings: mild cardiomegaly, coronary artery calcification, emphysema in the upper lobes, a 6 mm lung nodule.
Impression: consolidation in the right lower lobe consistent with pneumonia. Recommend follow up imaging.
Transcribe the audio. What is the diagnosis? Is this serious? Summarise the report for the patient.
I have had a headache for three days and the medication is not helping. Should I go to the hospital?
Take one tablet twice a day with food. Stop if you develop a rash, swelling or difficulty breathing.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Hello, how can I help you today? Thank you, goodbye. Yes. No. Maybe. Please repeat that.
"""


def _cache_dir() -> Path:
    from medlm import paths

    return paths.tokenizer_dir()


def build_byte_tokenizer(vocab_size: int = 512):
    """The preset tokenizer: byte-level BPE, ChatML, pad ``<|endoftext|>``, special ``<|audio|>``."""
    from transformers import PreTrainedTokenizerFast

    key = hashlib.sha256(
        json.dumps([_CORPUS, SPECIAL_TOKENS, CHATML_TEMPLATE, vocab_size]).encode()
    ).hexdigest()[:16]
    path = _cache_dir() / key / "tokenizer.json"
    if not path.exists():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tok.save(str(tmp))
        os.replace(tmp, path)  # atomic: concurrent builders write identical content
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=[AUDIO_TOKEN],
        padding_side="right",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer

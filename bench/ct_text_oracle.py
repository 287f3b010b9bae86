"""How far can the CT-CLIP teacher's text side take zero-shot classification, with perfect image features?

The image side is replaced by an oracle: each case's 18 labels through a trained linear map, so whatever
zero-shot AUROC is missed is the text side's. The text side is the ct_clip job's own: ``TeacherTask.collate``
(frozen SmolLM2-135M-Instruct, its states cached per report or per sentence, sentence dropout) and
``CTClipModel.encode_text`` with the text head under test: ``text_adapter_layers=0`` (masked mean + linear
projection) or ``> 0`` (``medlm.ct.modeling.TextAdapter``). Each variant is ``encode:layers:keep``:
``encode`` = ``report`` (the encoder reads a whole report) or ``sentence`` (each sentence alone,
``model.text_per_sentence``), ``keep`` = ``teacher.sentence_keep``. Training is symmetric InfoNCE on
(labels, report) of the synthetic train split; the score is CT-CLIP's prompt-pair zero-shot AUROC
(``"{X} is present."`` vs ``"{X} is not present."``) on the test split (val picks the F1 threshold).

    python bench/ct_text_oracle.py [--cases 800] [--steps 600] [--variants report:0:1 report:2:1 ...]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from medlm.ct.job import CTClipConfig, TeacherTask
from medlm.ct.metrics import prompts, zero_shot_probs
from medlm.ct.modeling import clip_loss, text_inputs
from medlm.data.schema import CT_RATE_CLASSES
from medlm.data.synth_ct import generate_ct_cases
from medlm.eval.metrics import zero_shot_auroc_f1

VARIANTS = ["report:0:1", "report:2:1", "sentence:2:1", "sentence:2:0.5"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=800)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--variants", nargs="+", default=VARIANTS, help="encode:adapter_layers:sentence_keep")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cases = generate_ct_cases(args.cases, seed=args.seed)
    reports = np.array([c["report"] for c in cases], dtype=object)
    y = torch.tensor(np.stack([c["labels"] for c in cases]), dtype=torch.float32)
    split = np.array([c["split"] for c in cases])
    present, absent = prompts(CT_RATE_CLASSES)
    no_volume = np.zeros((args.batch, 1, 1, 1), dtype=np.float32)  # the oracle stands in for the image side
    results = {"cases": args.cases, "steps": args.steps, "batch": args.batch}
    for variant in args.variants:
        encode, layers, keep = variant.split(":")
        torch.manual_seed(args.seed)
        cfg = CTClipConfig(
            seed=args.seed,
            teacher={"sentence_keep": float(keep)},
            model={
                "text_path": "smollm2-135m-instruct",
                "text_trainable": False,
                "text_adapter_layers": int(layers),
                "text_per_sentence": encode == "sentence",
            },
        )
        task = TeacherTask(cfg)
        teacher = task.build_model()
        image = torch.nn.Linear(len(CT_RATE_CLASSES), teacher.config.latent_dim, bias=False)
        text_params = [p for n, p in teacher.named_parameters() if p.requires_grad and n.startswith("text_")]
        opt = torch.optim.AdamW(text_params + [teacher.logit_scale, *image.parameters()], lr=1e-3)
        rng = np.random.default_rng(args.seed)
        t0 = time.time()
        for _ in range(args.steps):
            idx = rng.choice(np.flatnonzero(split == "train"), args.batch, replace=False)
            batch = task.collate({"report": reports[idx], "volume": no_volume})
            txt = teacher.encode_text(
                text_states=batch["text_states"], attention_mask=batch["attention_mask"]
            )
            loss = clip_loss(txt, F.normalize(image(y[idx]), dim=-1), teacher.logit_scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():  # the prompts through the full forward, as CTIndex / the evaluation embed them
            img = F.normalize(image(y), dim=-1)
            p = teacher.encode_text(
                **text_inputs(task.tokenizer, present + absent, per_sentence=teacher.config.text_per_sentence)
            )
            n = len(CT_RATE_CLASSES)
            score = zero_shot_probs(img.numpy(), p[:n].numpy(), p[n:].numpy(), teacher.logit_scale.item())
        test, val = split == "test", split == "val"
        m = zero_shot_auroc_f1(
            score[test], y[test].numpy(), score[val], y[val].numpy(), class_names=list(CT_RATE_CLASSES)
        )
        results[variant] = {
            "auroc": round(m["auroc_macro"], 3),
            "f1": round(m["f1_macro"], 3),
            "final_loss": round(loss.item(), 3),
            "train_s": round(time.time() - t0, 1),
        }
        print(variant, results[variant], flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

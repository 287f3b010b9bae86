"""How far can the CT-CLIP teacher's text side take zero-shot classification, with perfect image features?

The image side is replaced by an oracle: each case's 18 labels through a trained linear map, so whatever
zero-shot AUROC is missed is the text side's. The text side is medlm's own ``CTClipModel`` (frozen
SmolLM2-135M-Instruct, its states computed once per report as in training) with the text head under test:
``text_adapter_layers=0`` (masked mean + linear projection) or ``> 0`` (``medlm.ct.modeling.TextAdapter``).
Training is symmetric InfoNCE on (labels, report) of the synthetic train split; the score is CT-CLIP's
prompt-pair zero-shot AUROC (``"{X} is present."`` vs ``"{X} is not present."``) on the other splits.

    python bench/ct_text_oracle.py [--cases 800] [--steps 600] [--adapters 0 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from medlm.ct.job import CTModelSpec, build_teacher
from medlm.ct.metrics import prompts, zero_shot_probs
from medlm.ct.modeling import clip_loss, pad_text_states
from medlm.ct.synth import CT_RATE_CLASSES, generate_ct_cases
from medlm.eval.metrics import zero_shot_auroc_f1


def states(teacher, tok, texts: list[str], batch: int = 32):
    """The frozen encoder's states per text, padded to one length: (N, T, hidden), (N, T) mask."""
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], padding=True, return_tensors="pt")
        with torch.no_grad():
            h = teacher.text_states(enc["input_ids"], enc["attention_mask"])
        out += [x[m.bool()] for x, m in zip(h, enc["attention_mask"])]
    return pad_text_states(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=800)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--adapters", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cases = generate_ct_cases(args.cases, seed=args.seed)
    y = torch.tensor(np.stack([c["labels"] for c in cases]), dtype=torch.float32)
    train = np.array([c["split"] == "train" for c in cases])
    val = np.array([c["split"] == "val" for c in cases])
    test = ~train & ~val
    present, absent = prompts(CT_RATE_CLASSES)
    results = {"cases": args.cases, "steps": args.steps, "batch": args.batch}
    cached = None
    for layers in args.adapters:
        torch.manual_seed(args.seed)
        teacher, tok = build_teacher(CTModelSpec(text_path="smollm2-135m-instruct", text_trainable=False,
                                                 text_adapter_layers=layers))
        t0 = time.time()
        if cached is None:  # the frozen encoder is the same for every head: its states once
            cached = states(teacher, tok, [c["report"] for c in cases]), states(teacher, tok, present + absent)
        (r_states, r_mask), (p_states, p_mask) = cached
        image = torch.nn.Linear(len(CT_RATE_CLASSES), teacher.config.latent_dim, bias=False)
        text_params = [p for n, p in teacher.named_parameters() if p.requires_grad and n.startswith("text_")]
        opt = torch.optim.AdamW(text_params + [teacher.logit_scale, *image.parameters()], lr=1e-3)
        idx_train = np.flatnonzero(train)
        rng = np.random.default_rng(args.seed)
        for _ in range(args.steps):
            idx = torch.as_tensor(rng.choice(idx_train, args.batch, replace=False))
            txt = teacher.encode_text(text_states=r_states[idx], attention_mask=r_mask[idx])
            loss = clip_loss(txt, F.normalize(image(y[idx]), dim=-1), teacher.logit_scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            img = F.normalize(image(y), dim=-1)
            p = teacher.encode_text(text_states=p_states, attention_mask=p_mask)
            n = len(CT_RATE_CLASSES)
            score = zero_shot_probs(img.numpy(), p[:n].numpy(), p[n:].numpy(), teacher.logit_scale.item())
        m = zero_shot_auroc_f1(score[test], y[test].numpy(), score[val], y[val].numpy(),
                               class_names=list(CT_RATE_CLASSES))
        name = f"adapter {layers} layers" if layers else "mean-pool + linear"
        results[name] = {"auroc": round(m["auroc_macro"], 3), "f1": round(m["f1_macro"], 3),
                         "final_loss": round(loss.item(), 3), "train_s": round(time.time() - t0, 1)}
        print(name, results[name], flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

"""Does the demo model choose between two declared user functions? The call's first token, probed.

With two functions declared, the call must name the one whose description matches the request
(its thing, "the delay for ...", and its parameters). For each two-function conversation whose
names begin with different tokens, this renders the prompt up to `<|assistant|>` as the runtime
does and checks whether the model's most likely next token is the first token of the expected
function's name rather than of the other's. Training and held-out conversations are probed
separately, so a choice never learned (about 50% on both) is told apart from one learned but not
generalized (high on training only).

`--lens` also reads the choice from every layer's state at the last prompt position, through the
final norm and the output projection (a logit lens): whether a middle layer makes the choice that
the output then loses.

`--finetune-steps N` then trains the weights N more steps on two-function training conversations
alone, the choosing token's loss weighted `--weight` times, and probes again as it goes: whether the
choice is learnable from where the weights are, not only whether they make it.

    python3 scripts/demo/probe_selection.py
    python3 scripts/demo/probe_selection.py --lens
    python3 scripts/demo/probe_selection.py --finetune-steps 150 --weight 20
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402


def two_function_cases(tok, split: str, n: int, seed: int) -> list[dict]:
    """Up to `n` two-function conversations of `split` whose names start with different tokens:
    the prompt's ids, the expected first token, the other function's, and whether the two share
    their parameters (then only the thing asked for tells them apart)."""
    from glm_runtime.chat_format import render_ids

    cases = []
    for ex in data.generate("function", 40 * n, seed=seed, split=split):
        fns = [t for t in ex.tools if t.kind == "function"]
        if len(fns) != 2:
            continue
        first = {f.name: tok(f.name, add_special_tokens=False)["input_ids"][0] for f in fns}
        target = first[ex.expect["tool"]]
        other = next(v for k, v in first.items() if k != ex.expect["tool"])
        if target == other:
            continue
        cases.append({"ids": render_ids(ex.messages[:2], ex.tools, tok, add_generation_prompt=True),
                      "target": target, "other": other,
                      "same_params": set(fns[0].parameters["properties"]) == set(fns[1].parameters["properties"])})
        if len(cases) == n:
            break
    return cases


def choose(model, cases: list[dict]) -> list[int]:
    """The model's most likely next token after each case's prompt."""
    import torch

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = [int(model(input_ids=torch.tensor([c["ids"]])).logits[0, -1].argmax()) for c in cases]
    model.train(was_training)
    return out


def rates(model, cases: list[dict]) -> dict[str, float]:
    """The share of cases where the model picks the expected function: all, and by whether the two
    share their parameters; `other` is the share that picks the other function instead."""
    picked = choose(model, cases)

    def share(sel, key="target"):
        sel = [(c, p) for c, p in zip(cases, picked) if sel(c)]
        return sum(p == c[key] for c, p in sel) / len(sel) if sel else float("nan")

    return {"right": share(lambda c: True), "other": share(lambda c: True, "other"),
            "same_params": share(lambda c: c["same_params"]), "other_params": share(lambda c: not c["same_params"]),
            "n_same_params": sum(c["same_params"] for c in cases)}


def _line(name: str, r: dict[str, float]) -> str:
    return (f"{name:8s} right {r['right']:.0%} (other function {r['other']:.0%}); "
            f"same parameters {r['same_params']:.0%} of {r['n_same_params']}, different parameters {r['other_params']:.0%}")


def lens(model, cases: list[dict]) -> list[float]:
    """Whether the choice is made anywhere before the output, if not written out there: per layer
    (0 = the embeddings), the share of cases where that layer's state at the last prompt position,
    read through the final norm and the output projection (a logit lens), scores the expected
    function's first token above the other's."""
    import torch

    model.eval()
    wins = None
    with torch.inference_mode():
        for c in cases:
            hs = model(input_ids=torch.tensor([c["ids"]]), output_hidden_states=True).hidden_states
            last = torch.stack([h[0, -1] for h in hs[:-1]] + [hs[-1][0, -1]])
            # transformers already applied the final norm to the last hidden state
            normed = torch.cat([model.model.norm(last[:-1]), last[-1:]])
            logits = model.lm_head(normed)
            won = (logits[:, c["target"]] > logits[:, c["other"]]).tolist()
            wins = won if wins is None else [w + x for w, x in zip(wins, won)]
    return [w / len(cases) for w in wins]


def finetune(model, tok, steps: int, weight: float, lr: float, probe, every: int, seed: int = 0) -> None:
    """Train `model` `steps` steps on two-function training conversations, the first token of the
    call weighted `weight` times in the loss; `probe(step)` every `every` steps."""
    import torch

    import train
    from glm_runtime.tokenizer import GLM4_SPECIAL_TOKENS

    stop = {t: tok.convert_tokens_to_ids(t) for t in GLM4_SPECIAL_TOKENS}
    exs = [e for e in data.generate("function", 12000, seed=seed + 7)
           if sum(t.kind == "function" for t in e.tools) == 2]
    enc = [data.encode(e, tok, stop) for e in exs]
    # the call's first token only (the answer's first token is weighted 1)
    choice = [train.choice_positions(ids, labels, stop["<|assistant|>"])[:1] for ids, labels in enc]
    train.use_segment_attention(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98))
    rng, queue = random.Random(seed), []
    model.train()
    for step in range(1, steps + 1):
        if not queue:
            queue = train.batches(enc, 8192, 2048, rng)
        rows = queue.pop()
        ids, labels, pos, segments = train.collate(enc, rows, stop["<|endoftext|>"])
        w = train.choice_weights(enc, rows, choice, weight, labels.shape)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = train.trained_loss(model, ids, labels, pos, segments, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % every == 0 or step == steps:
            probe(step, loss.item())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo", help="checkpoint directory (default: the shipped demo model)")
    p.add_argument("--count", type=int, default=120, help="two-function conversations per split")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--lens", action="store_true",
                   help="also read the choice from every layer's last hidden state (a logit lens)")
    p.add_argument("--finetune-steps", type=int, default=0)
    p.add_argument("--weight", type=float, default=20.0, help="loss weight of the choosing token when fine-tuning")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--probe-every", type=int, default=50)
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from glm_runtime.demo import demo_model_dir
    from glm_runtime.tokenizer import load_tokenizer

    torch.set_num_threads(2)
    torch.manual_seed(0)
    path = str(demo_model_dir()) if args.model == "demo" else args.model
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cases = {s: two_function_cases(tok, s, args.count, args.seed) for s in ("train", "eval")}
    out = {s: rates(model, c) for s, c in cases.items()}
    for s, r in out.items():
        print(_line(f"{s} ({len(cases[s])})", r), flush=True)
    if args.lens:
        per_split = {s: lens(model, c) for s, c in cases.items()}
        for layer in range(len(per_split["train"])):
            print(f"logit lens, layer {layer}: the expected function above the other in "
                  + ", ".join(f"{s} {v[layer]:.0%}" for s, v in per_split.items()), flush=True)
    if args.finetune_steps:
        t0 = time.time()

        def probe(step: int, loss: float) -> None:
            got = {s: rates(model, c) for s, c in cases.items()}
            print(f"step {step} loss {loss:.4f} {time.time() - t0:.0f}s: "
                  + "; ".join(f"{s} {r['right']:.0%}" for s, r in got.items()), flush=True)
            out.update({f"{s}_after": r for s, r in got.items()})

        finetune(model, tok, args.finetune_steps, args.weight, args.lr, probe, args.probe_every)
    return out


if __name__ == "__main__":
    main()

"""Train hoa's prompt rewriter: a small transformers T5ForConditionalGeneration from scratch on generated pairs
(tools/rewriter/data.py, train families only, never an input of the dev or test set), with its byte-level BPE
tokenizer (tokenizer.py). Deterministic given --seed (torch, the data stream and the tokenizer corpus all derive
from it). Every --every steps (and at the end) the folder is rewritten whole (config.json, generation_config.json,
model.safetensors, tokenizer.json), so an interrupted run leaves a usable model; the log prints the loss and the
greedy exact match on a fixed 200-pair slice of the dev set.

    OMP_NUM_THREADS=1 nohup nice -n 19 /tmp/fxenv/bin/python -m tools.rewriter.train --out weights/default/rewriter \\
        --steps 12000 > /tmp/rewriter_train.log 2>&1 &
    python -m tools.rewriter.train --out /tmp/rw --steps 20 --bench   # steps/s of a config
    python -m tools.rewriter.train --init weights/default/rewriter --out /tmp/rw2 --seed 1 --steps 1500 --lr 5e-4 \
        --warmup 100 --batch 32                                       # continue a folder (fresh optimizer)
"""

import argparse
import itertools
import json
import math
import os
import shutil
import tempfile
import time

import numpy as np
import torch

from tools.rewriter import data
from tools.rewriter.tokenizer import check, fast_tokenizer, train_tokenizer


def model_config(a, vocab):
    from transformers import T5Config
    return T5Config(vocab_size=vocab, d_model=a.d_model, d_kv=a.d_model // a.heads, d_ff=a.d_ff, num_layers=a.layers,
                    num_decoder_layers=a.layers, num_heads=a.heads, relative_attention_num_buckets=32,
                    relative_attention_max_distance=128, dropout_rate=a.dropout, feed_forward_proj="relu",
                    tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def generation_config(max_length, beams):
    from transformers import GenerationConfig
    return GenerationConfig(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, max_length=max_length,
                            num_beams=beams, do_sample=False)


def save(model, tok_path, out, gen, meta):
    """Write the folder whole, then swap it in (an interrupted save never leaves half a model)."""
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    gen.save_pretrained(tmp)
    shutil.copy(tok_path, os.path.join(tmp, "tokenizer.json"))
    with open(os.path.join(tmp, "training.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    old = out.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out):
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def rewrite(model, ft, texts, beams=1, max_length=96, batch=100):
    model.eval()
    out = []
    for i in range(0, len(texts), batch):
        enc = ft(texts[i:i + batch], return_tensors="pt", padding=True)
        ids = model.generate(**enc, num_beams=beams, max_length=max_length, do_sample=False)
        out += ft.batch_decode(ids, skip_special_tokens=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--d-ff", type=int, default=512)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--vocab", type=int, default=768)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=0, help="also stop (and save) after this long")
    ap.add_argument("--bench", action="store_true", help="time --steps steps, save nothing")
    ap.add_argument("--init", default=None, help="continue from this rewriter folder (its tokenizer and config; a fresh "
                    "optimizer and schedule)")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)
    from transformers import T5ForConditionalGeneration

    dev = data.read_jsonl(os.path.join(data.SETS, "dev.jsonl"))
    test = data.read_jsonl(os.path.join(data.SETS, "test.jsonl"))
    exclude = {p["input"] for p in dev + test}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)) or ".", exist_ok=True)
    tok_path = os.path.join(tempfile.gettempdir(), f"rewriter-tokenizer-{os.getpid()}.json")
    corpus = list(itertools.islice(data.train_stream(10_000 + a.seed, exclude), 20000))
    if a.init:
        shutil.copy(os.path.join(a.init, "tokenizer.json"), tok_path)
    else:
        tok = train_tokenizer([p["input"] for p in corpus] + [p["target"] for p in corpus], a.vocab)
        tok.save(tok_path)
    check(tok_path, [p["input"] for p in corpus[:500]] + [p["target"] for p in corpus[:500]])
    ft = fast_tokenizer(tok_path)
    max_len = max(len(ft(p["target"])["input_ids"]) for p in corpus) + 16

    if a.init:
        model = T5ForConditionalGeneration.from_pretrained(a.init)
    else:
        model = T5ForConditionalGeneration(model_config(a, len(ft)))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params:,} vocab {len(ft)} max target tokens {max_len - 16}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        return a.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - a.warmup) / max(1, a.steps - a.warmup))))

    stream = data.train_stream(a.seed, exclude)
    dev_slice = dev[::len(dev) // 200][:200]
    gen = generation_config(max_len, 4)
    t0, losses = time.time(), []
    for step in range(a.steps):
        batch = [next(stream) for _ in range(a.batch)]
        enc = ft([p["input"] for p in batch], return_tensors="pt", padding=True)
        lab = ft([p["target"] for p in batch], return_tensors="pt", padding=True)["input_ids"]
        lab[lab == 0] = -100
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        model.train()
        loss = model(**enc, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        done = step + 1 == a.steps or (a.minutes and time.time() - t0 > a.minutes * 60)
        if a.bench:
            if done:
                print(f"{a.steps} steps in {time.time() - t0:.1f} s: {a.steps / (time.time() - t0):.2f} steps/s")
            continue
        if (step + 1) % 100 == 0:
            print(f"step {step + 1} loss {np.mean(losses[-100:]):.4f} lr {lr_at(step):.2e} "
                  f"{time.time() - t0:.0f} s", flush=True)
        if (step + 1) % a.every == 0 or done:
            outs = rewrite(model, ft, [p["input"] for p in dev_slice])
            em = np.mean([o == p["target"] for o, p in zip(outs, dev_slice)]) * 100
            print(f"step {step + 1} dev-slice greedy exact {em:.1f}%", flush=True)
            meta = {"step": step + 1, "loss": float(np.mean(losses[-100:])), "dev_slice_greedy_exact": em,
                    "params": n_params, "seconds": round(time.time() - t0), "args": vars(a)}
            save(model, tok_path, a.out, gen, meta)
        if done:
            break


if __name__ == "__main__":
    main()

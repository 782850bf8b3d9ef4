#!/usr/bin/env python3
"""Evaluate a saved xq-demo checkpoint with transformers (float32, eager attention, no TF32).

Usage: evaluate.py MODEL_DIR DATA_DIR OUT_DIR

* loads MODEL_DIR with AutoModelForCausalLM and compares its logits with this repo's own
  implementation (xqmodel.DemoLlama) on the same weights;
* checks that AutoTokenizer reproduces the stored ids of every eval prompt;
* reference.json: greedy ids (32 new tokens, DynamicCache, EOS not special) and last-position
  logits for the fixed prompts in DATA_DIR/prompts.json;
* eval_results.json: held-out perplexity on DATA_DIR/prose_512.jsonl, passkey accuracy per
  bucket (greedy, up to 8 new tokens, stop at <|eos|>, correct iff the first run of digits in the
  continuation equals the answer) with per-prompt outputs.
"""
import json
import math
import os
import re
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
import transformers

from xqmodel import DemoConfig, DemoLlama

model_dir, data_dir, out_dir = sys.argv[1:4]
os.makedirs(out_dir, exist_ok=True)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
t0 = time.time()

model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").to(dev).eval()
tok = AutoTokenizer.from_pretrained(model_dir)
cfgj = json.load(open(os.path.join(model_dir, "config.json")))
own = DemoLlama(DemoConfig(
    vocab_size=cfgj["vocab_size"], hidden_size=cfgj["hidden_size"], intermediate_size=cfgj["intermediate_size"],
    num_hidden_layers=cfgj["num_hidden_layers"], num_attention_heads=cfgj["num_attention_heads"],
    num_key_value_heads=cfgj["num_key_value_heads"], head_dim=cfgj["head_dim"], rope_theta=cfgj["rope_theta"],
    rms_norm_eps=cfgj["rms_norm_eps"], max_position_embeddings=cfgj["max_position_embeddings"],
))
own.load_state_dict({k: v.float() for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()})
own = own.to(dev).eval()


def read_jsonl(path):
    return [json.loads(l) for l in open(path, encoding="utf-8")]


prompts = json.load(open(os.path.join(data_dir, "prompts.json")))
passkey = {b: read_jsonl(os.path.join(data_dir, f"passkey_{b}.jsonl")) for b in (256, 512, 1024, 2048)}
prose = read_jsonl(os.path.join(data_dir, "prose_512.jsonl"))

results = {
    "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "precision": "float32 weights (bf16 upcast), eager attention, TF32 off",
}

# 1. own implementation == transformers Llama
with torch.no_grad():
    diffs = []
    for ids in [p["input_ids"] for p in prompts] + [passkey[1024][0]["input_ids"]]:
        x = torch.tensor([ids], device=dev)
        a = model(x).logits[0]
        b = own(x)[0]
        diffs.append(float((a - b).abs().max()))
results["own_vs_transformers_max_abs_logit_diff"] = max(diffs)

# 2. AutoTokenizer reproduces stored ids
mism = 0
checked = 0
for recs in passkey.values():
    for r in recs:
        checked += 1
        mism += tok(r["text"])["input_ids"] != r["input_ids"]
results["autotokenizer"] = {"checked": checked, "mismatches": int(mism)}


# 3. reference greedy ids / logits
@torch.no_grad()
def greedy(ids, n, stop_at_eos):
    cache = DynamicCache(config=model.config)
    x = torch.tensor([ids], device=dev)
    out = model(x, past_key_values=cache, use_cache=True)
    first_logits = out.logits[0, -1].float().cpu()
    gen = []
    for _ in range(n):
        nxt = int(out.logits[0, -1].argmax())
        gen.append(nxt)
        if stop_at_eos and nxt == 1:
            break
        out = model(torch.tensor([[nxt]], device=dev), past_key_values=out.past_key_values, use_cache=True)
    return gen, first_logits


ref = {"model": "xq-demo", "device": results["device"], "torch": torch.__version__,
       "transformers": transformers.__version__, "precision": results["precision"], "prompts": []}
for p in prompts:
    gen, logits = greedy(p["input_ids"], 32, stop_at_eos=False)
    g2 = model.generate(torch.tensor([p["input_ids"]], device=dev), do_sample=False, min_new_tokens=32,
                        max_new_tokens=32, pad_token_id=1)[0, len(p["input_ids"]):].tolist()
    top = torch.topk(logits, 10)
    ref["prompts"].append({
        "name": p["name"], "n_tokens": len(p["input_ids"]), "text": p["text"], "input_ids": p["input_ids"],
        "greedy_ids": gen, "greedy_text": tok.decode(gen), "generate_matches_manual_loop": g2 == gen,
        "top10_last": {"ids": top.indices.tolist(), "logits": [round(v, 5) for v in top.values.tolist()]},
        "logits_last": [round(v, 5) for v in logits.tolist()],
    })
json.dump(ref, open(os.path.join(out_dir, "reference.json"), "w"))

# 4. perplexity
with torch.no_grad():
    nll = []
    for r in prose:
        x = torch.tensor([r["input_ids"]], device=dev)
        lp = model(x).logits[0, :-1].double().log_softmax(-1)
        nll.append(float(-lp.gather(1, x[0, 1:, None]).sum()))
    pred = sum(len(r["input_ids"]) - 1 for r in prose)
    results["perplexity"] = {"records": len(prose), "predicted_tokens": pred, "mean_nll": sum(nll) / pred,
                             "ppl": math.exp(sum(nll) / pred), "per_sequence_nll_sum": nll}
    # the shipped prose_256 records are the first tokens of the same stream
    small = read_jsonl(os.path.join(data_dir, "prose_256.jsonl")) if os.path.exists(os.path.join(data_dir, "prose_256.jsonl")) else []
    if small:
        s_nll = 0.0
        for r in small:
            x = torch.tensor([r["input_ids"]], device=dev)
            lp = model(x).logits[0, :-1].double().log_softmax(-1)
            s_nll += float(-lp.gather(1, x[0, 1:, None]).sum())
        s_pred = sum(len(r["input_ids"]) - 1 for r in small)
        results["perplexity_prose_256_small"] = {"records": len(small), "ppl": math.exp(s_nll / s_pred)}

# 5. passkey
results["passkey"] = {}
for b, recs in passkey.items():
    rows = []
    for r in recs:
        gen, _ = greedy(r["input_ids"], 8, stop_at_eos=True)
        text = tok.decode([g for g in gen if g != 1])
        m = re.search(r"\d+", text)
        rows.append({"id": r["id"], "generated_ids": gen, "generated_text": text,
                     "correct": bool(m and m.group(0) == r["answer"])})
    acc = sum(x["correct"] for x in rows) / len(rows)
    results["passkey"][str(b)] = {"accuracy": acc, "n": len(rows),
                                  "accuracy_first10": sum(x["correct"] for x in rows[:10]) / 10, "prompts": rows}
results["eval_wall_s"] = round(time.time() - t0, 1)
json.dump(results, open(os.path.join(out_dir, "eval_results.json"), "w"), indent=1)
print(json.dumps({k: (v if k not in ("passkey", "perplexity") else None) for k, v in results.items()}))
print("ppl", results["perplexity"]["ppl"], "passkey", {b: v["accuracy"] for b, v in results["passkey"].items()})
for p in ref["prompts"]:
    print(p["name"], p["generate_matches_manual_loop"], repr(p["greedy_text"]))

#!/usr/bin/env python3
"""Tokenize the xq-demo corpus and build the eval sets (CPU; needs `tokenizers` and numpy).

Usage: prepare_data.py DATA_DIR SMALL_EVAL_DIR

Inputs (from collect_corpus.sh / train_tokenizer.py): DATA_DIR/corpus_{train,eval}.jsonl,
DATA_DIR/tokenizer.json.

The held-out documents are split once more by sha1(doc id): (h // 50) % 2 == 0 → "val" (watched
during training), else → "test" (never seen by training; every reported number and every eval
prompt comes from it).

Writes DATA_DIR/gpu/ (what train.py / evaluate.py read on the GPU machine; no tokenizer needed there):
  train.bin, val.bin       uint16 token streams, each document packed as <|bos|> doc <|eos|>
  meta.json                needle / question / key token tables for passkey training samples,
                           token classes for sentence boundaries, split sizes
  passkey_{256,512,1024,2048}.jsonl   30 passkey prompts per bucket (test split)
  prose_512.jsonl          up to 200 records of <|bos|> + 511 consecutive test tokens
  prose_256.jsonl          the 8 shipped prose records (below)
  prompts.json             fixed prompts (short, medium) for the reference greedy ids
  tokenizer.json, tokenizer_config.json (copied)
and SMALL_EVAL_DIR/ (committed with the checkpoint): passkey_256.jsonl, passkey_512.jsonl
(first 10 prompts of each bucket) and prose_256.jsonl (8 records of <|bos|> + 255 test tokens).
"""
import hashlib
import json
import os
import random
import re
import shutil
import sys

import numpy as np
from tokenizers import Tokenizer

NEEDLE = " The pass key is {k}. Remember it. {k} is the pass key."
QUESTION = "\nWhat is the pass key? The pass key is"
BUCKETS = (256, 512, 1024, 2048)
PER_BUCKET = 30


def doc_hash(doc_id):
    return int(hashlib.sha1(doc_id.encode()).hexdigest(), 16)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def pack(tok, docs, path):
    encs = tok.encode_batch([d["text"] for d in docs], add_special_tokens=False)
    parts = []
    for e in encs:
        parts.append(np.array([0] + e.ids + [1], dtype=np.uint16))
    arr = np.concatenate(parts)
    arr.tofile(path)
    return int(arr.size)


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def build_passkey(tok, text, bucket, rng, idx):
    """One prompt of n_tokens in [bucket-28, bucket-4] from held-out prose starting at a random sentence."""
    starts = [m.end() for m in re.finditer(r"\n", text)]
    lo, hi = bucket - 28, bucket - 4
    for _ in range(200):
        s = rng.choice(starts)
        chunk = text[s : s + bucket * 8]
        sentences = re.split(r"(?<=\.) (?=[A-Z])", chunk)
        if len(sentences) < 4:
            continue
        key = str(rng.randint(10000, 99999))
        needle = NEEDLE.format(k=key)
        best = None
        for n in range(3, len(sentences)):
            j = rng.randint(1, n - 1)  # at least one sentence before and after the needle
            prose = " ".join(sentences[:j]) + needle + " " + " ".join(sentences[j:n])
            full = prose + QUESTION
            ids = tok.encode(full).ids
            if len(ids) > hi:
                break
            best = (full, ids, j, n, " ".join(sentences[:j]))
        if best is None or len(best[1]) < lo:
            continue
        full, ids, j, n, before = best
        needle_index = len(tok.encode(before).ids)
        assert ids[needle_index : needle_index + len(enc(tok, needle))] == enc(tok, needle)
        return {
            "id": f"passkey-{bucket}-{idx:02d}",
            "length_bucket": bucket,
            "n_tokens": len(ids),
            "answer": key,
            "needle_depth": round(j / n, 4),
            "needle_token_index": needle_index,
            "text": full,
            "input_ids": ids,
        }
    raise RuntimeError(f"could not build a passkey prompt for bucket {bucket}")


def prose_records(tok, stream, width, count, prefix):
    out = []
    step = width - 1
    for i in range(min(count, len(stream) // step)):
        window = stream[step * i : step * (i + 1)]
        out.append({"id": f"{prefix}-{i:03d}", "input_ids": [0] + window, "text": tok.decode(window)})
    return out


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    data_dir, small_dir = sys.argv[1:3]
    gpu_dir = os.path.join(data_dir, "gpu")
    os.makedirs(gpu_dir, exist_ok=True)
    os.makedirs(small_dir, exist_ok=True)
    tok = Tokenizer.from_file(os.path.join(data_dir, "tokenizer.json"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(data_dir, name), os.path.join(gpu_dir, name))

    train_docs = read_jsonl(os.path.join(data_dir, "corpus_train.jsonl"))
    held = read_jsonl(os.path.join(data_dir, "corpus_eval.jsonl"))
    val_docs = [d for d in held if (doc_hash(d["id"]) // 50) % 2 == 0]
    test_docs = [d for d in held if (doc_hash(d["id"]) // 50) % 2 == 1]

    n_train = pack(tok, train_docs, os.path.join(gpu_dir, "train.bin"))
    n_val = pack(tok, val_docs, os.path.join(gpu_dir, "val.bin"))
    train_chars = sum(len(d["text"]) for d in train_docs)
    print(f"train {n_train} tokens ({train_chars / n_train:.2f} chars/token), val {n_val} tokens")

    # token tables for passkey training samples
    vocab = tok.get_vocab()
    id_to_tok = {i: t for t, i in vocab.items()}
    ends_sentence = np.zeros(len(vocab), dtype=np.uint8)
    starts_word = np.zeros(len(vocab), dtype=np.uint8)
    for i, t in id_to_tok.items():
        s = tok.decode([i]) if i > 1 else ""
        if s.endswith(".") and not s.endswith(".."):
            ends_sentence[i] = 1
        if len(s) >= 2 and s[0] == " " and s[1].isupper():
            starts_word[i] = 1
    keys = [str(k) for k in range(10000, 100000)]
    key_ids = [e.ids for e in tok.encode_batch([" " + k for k in keys], add_special_tokens=False)]
    pieces = {
        "needle_a": enc(tok, " The pass key is"),
        "needle_b": enc(tok, ". Remember it."),
        "needle_c": enc(tok, " is the pass key."),
        "question": enc(tok, QUESTION),
    }
    rng = random.Random(7)
    for _ in range(200):  # piecewise tokenization == tokenization of the whole needle
        k = rng.choice(keys)
        kid = key_ids[int(k) - 10000]
        assert pieces["needle_a"] + kid + pieces["needle_b"] + kid + pieces["needle_c"] == enc(tok, NEEDLE.format(k=k))
    meta = {
        "vocab_size": len(vocab),
        "train_tokens": n_train,
        "val_tokens": n_val,
        "train_docs": len(train_docs),
        "val_docs": len(val_docs),
        "test_docs": len(test_docs),
        "train_chars": train_chars,
        "pieces": pieces,
        "key_ids": key_ids,
        "ends_sentence": np.nonzero(ends_sentence)[0].tolist(),
        "starts_word": np.nonzero(starts_word)[0].tolist(),
    }
    with open(os.path.join(gpu_dir, "meta.json"), "w") as f:
        json.dump(meta, f)

    # eval sets from the test split
    test_text = "\n".join(d["text"] for d in test_docs)
    stream = enc(tok, test_text)
    print(f"test {len(test_docs)} docs, {len(test_text)} chars, {len(stream)} tokens")
    write_jsonl(os.path.join(gpu_dir, "prose_512.jsonl"), prose_records(tok, stream, 512, 200, "prose"))
    small_prose = prose_records(tok, stream, 256, 8, "prose256")
    write_jsonl(os.path.join(small_dir, "prose_256.jsonl"), small_prose)
    write_jsonl(os.path.join(gpu_dir, "prose_256.jsonl"), small_prose)
    rng = random.Random(20251125)
    for b in BUCKETS:
        recs = [build_passkey(tok, test_text, b, rng, i) for i in range(PER_BUCKET)]
        for r in recs:  # canonical ids: text → ids round trip, and decode(ids) == text
            assert tok.encode(r["text"]).ids == r["input_ids"]
            assert tok.decode(r["input_ids"], skip_special_tokens=True) == r["text"]
        write_jsonl(os.path.join(gpu_dir, f"passkey_{b}.jsonl"), recs)
        if b in (256, 512):
            write_jsonl(os.path.join(small_dir, f"passkey_{b}.jsonl"), recs[:10])
        print(f"passkey {b}: n_tokens {min(r['n_tokens'] for r in recs)}-{max(r['n_tokens'] for r in recs)}")

    # fixed prompts for reference greedy ids: paragraph starts in the test text
    paras = [p for p in test_text.split("\n") if len(p) > 400 and p[0].isupper()]
    prompts = []
    for name, n in (("short", 20), ("medium", 100)):
        p = paras[0 if name == "short" else 1]
        ids = tok.encode(p).ids[:n]
        prompts.append({"name": name, "n_tokens": len(ids), "text": tok.decode(ids, skip_special_tokens=True), "input_ids": ids})
    with open(os.path.join(gpu_dir, "prompts.json"), "w") as f:
        json.dump(prompts, f, indent=1)


if __name__ == "__main__":
    main()

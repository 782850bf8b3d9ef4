#!/usr/bin/env python3
"""Train the xq-demo byte-level BPE tokenizer with the `tokenizers` library (tested with 0.22.2).

Usage: train_tokenizer.py DATA_DIR [VOCAB_SIZE]

Reads DATA_DIR/corpus_train.jsonl (training split only), writes DATA_DIR/tokenizer.json and
DATA_DIR/tokenizer_config.json. Layout matches the project's eval models: GPT-2 style ByteLevel
pre-tokenizer (add_prefix_space false, regex on), no normalizer, ByteLevel decoder, specials
<|bos|> = 0 and <|eos|> = 1, TemplateProcessing that prepends <|bos|>.
"""
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers


def main():
    data_dir = sys.argv[1]
    vocab_size = int(sys.argv[2]) if len(sys.argv) > 2 else 4096

    def texts():
        with open(os.path.join(data_dir, "corpus_train.jsonl"), encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=["<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A",
        pair="<|bos|> $A <|bos|> $B",
        special_tokens=[("<|bos|>", 0)],
    )
    assert tok.token_to_id("<|bos|>") == 0 and tok.token_to_id("<|eos|>") == 1
    tok.save(os.path.join(data_dir, "tokenizer.json"))
    with open(os.path.join(data_dir, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "backend": "tokenizers",
                "bos_token": "<|bos|>",
                "eos_token": "<|eos|>",
                "model_max_length": 2048,
                "tokenizer_class": "PreTrainedTokenizerFast",
                "clean_up_tokenization_spaces": False,
            },
            f,
            indent=2,
        )
    enc = tok.encode("The pass key is 48213. Remember it.")
    print("vocab", tok.get_vocab_size(), "example", enc.tokens)


if __name__ == "__main__":
    main()

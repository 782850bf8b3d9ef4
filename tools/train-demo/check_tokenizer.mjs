// Checks that @huggingface/tokenizers (the JS tokenizer the runtime uses) reproduces the stored
// input_ids of every eval record and decodes them back to the stored text.
// Usage: node tools/train-demo/check_tokenizer.mjs MODEL_DIR EVAL_FILE.jsonl...
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const require = createRequire(join(repo, "packages", "models", "package.json"));
const { Tokenizer } = require("@huggingface/tokenizers");

const [modelDir, ...files] = process.argv.slice(2);
const tok = new Tokenizer(
  JSON.parse(readFileSync(join(modelDir, "tokenizer.json"), "utf8")),
  JSON.parse(readFileSync(join(modelDir, "tokenizer_config.json"), "utf8")),
);
let bad = 0;
let n = 0;
for (const file of files) {
  const records = readFileSync(file, "utf8").trim().split("\n").map((l) => JSON.parse(l));
  for (const r of records) {
    n++;
    const canonical = r.id.startsWith("passkey");
    if (canonical) {
      const ids = tok.encode(r.text).ids;
      if (JSON.stringify(ids) !== JSON.stringify(r.input_ids)) {
        bad++;
        console.error(`${file} ${r.id}: encode mismatch`);
      }
    }
    const text = tok.decode(r.input_ids, { skip_special_tokens: true });
    if (text !== r.text) {
      bad++;
      console.error(`${file} ${r.id}: decode mismatch`);
    }
  }
}
console.log(`${n} records, ${bad} mismatches`);
process.exit(bad ? 1 : 0);

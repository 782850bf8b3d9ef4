#!/usr/bin/env python3
"""Extract English prose from unpacked Debian documentation packages (stdlib only).

Usage: extract.py PACKAGES_TSV UNPACK_DIR OUT_DIR

For every row of PACKAGES_TSV (package, licence, include globs, exclude substrings) it reads
UNPACK_DIR/<package>/<glob> files:
  * HTML: text of <p>/<li>/<dd>/<dt>/<h1-6>/<blockquote> blocks, skipping <pre>, <script>, <style>,
    <table>, <nav>, <head>, code blocks and navigation/sidebar containers;
  * dictd (*.dict.dz): each dictionary entry, re-wrapped into paragraphs, grouped into documents.
Then it drops boilerplate (lines < 40 chars seen on >= 10 pages), removes exact duplicate
paragraphs of >= 40 chars (over the whole corpus), drops documents shorter than
300 characters, and splits documents into train / held-out by sha1(doc id) % 50 == 0 (held out).

Writes OUT_DIR/corpus_train.jsonl, OUT_DIR/corpus_eval.jsonl ({"id", "package", "text"} per line)
and OUT_DIR/corpus_stats.json (per-package counts).
"""
import fnmatch
import gzip
import hashlib
import html
import json
import os
import re
import sys
from html.parser import HTMLParser

BLOCK_TAGS = {"p", "li", "dd", "dt", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "figcaption"}
SKIP_TAGS = {"pre", "script", "style", "table", "nav", "head", "form", "select", "textarea", "svg", "math"}
CONTAINER_TAGS = SKIP_TAGS | {"div", "header", "footer", "aside", "section", "span", "a", "code"}
SKIP_CLASS = re.compile(
    r"(sphinxsidebar.*|related|navbar.*|nav|nav-.*|navigation|sidebar.*|footer|header|toc|toc-.*|"
    r"toctree.*|breadcrumbs?|highlight.*|literal-block|headerlink|menu|searchbox|programlisting|"
    r"screen|synopsis|topbar|top-bar|mobile.*|page-footer|navheader|navfooter)$",
    re.I,
)


class ProseParser(HTMLParser):
    """Collects paragraphs of visible prose from one HTML page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []  # (tag, skips) for container tags
        self.skip = 0
        self.in_block = False
        self.buf = []
        self.paragraphs = []

    def flush(self):
        if self.buf:
            text = re.sub(r"\s+", " ", "".join(self.buf)).strip()
            if text:
                self.paragraphs.append(text)
        self.buf = []

    def handle_starttag(self, tag, attrs):
        if tag in BLOCK_TAGS:
            self.flush()
            self.in_block = True
        elif tag == "br":
            self.buf.append(" ")
        if tag in CONTAINER_TAGS:
            tokens = " ".join(v or "" for k, v in attrs if k in ("class", "id", "role")).split()
            skips = tag in SKIP_TAGS or any(SKIP_CLASS.match(t) for t in tokens)
            # inline tags only skip when flagged (e.g. <a class="headerlink">)
            self.stack.append((tag, skips))
            if skips:
                self.skip += 1

    def handle_endtag(self, tag):
        if tag in BLOCK_TAGS:
            self.flush()
            self.in_block = False
        if tag in CONTAINER_TAGS:
            for i in range(len(self.stack) - 1, -1, -1):
                if self.stack[i][0] == tag:
                    for _, s in self.stack[i:]:
                        if s:
                            self.skip -= 1
                    del self.stack[i:]
                    break

    def handle_data(self, data):
        if self.in_block and self.skip == 0:
            self.buf.append(data)

    def close(self):
        super().close()
        self.flush()


def good_paragraph(p):
    """Prose filter: enough letters, not code-like, no leftover markup."""
    if len(p) < 3:
        return False
    letters = sum(c.isalpha() for c in p)
    if letters < 0.6 * len(p):
        return False
    if sum(c in "{}[]();=<>$\\|_" for c in p) > 0.05 * len(p):
        return False
    try:
        p.encode("ascii")
    except UnicodeEncodeError:
        # allow typographic punctuation but not whole foreign-language paragraphs
        if sum(ord(c) > 127 for c in p) > 0.02 * len(p):
            return False
    return True


def clean_paragraph(p):
    p = p.replace("\u00b6", "").replace("\u00a0", " ").replace("\u200b", "")
    p = re.sub(r"\s+", " ", p).strip()
    return p


def html_document(path):
    with open(path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8", errors="replace")
    parser = ProseParser()
    try:
        parser.feed(text)
        parser.close()
    except Exception:  # malformed page: keep what was parsed
        pass
    paras = [clean_paragraph(p) for p in parser.paragraphs]
    return [p for p in paras if good_paragraph(p)]


def b64num(s):
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    n = 0
    for c in s:
        n = n * 64 + alphabet.index(c)
    return n


def dict_documents(dz_path, name):
    """dictd entries → documents of about 3000 characters (entries kept whole)."""
    data = gzip.open(dz_path).read().decode("utf-8", errors="replace")
    index_path = dz_path[: -len(".dict.dz")] + ".index"
    entries = []
    raw = gzip.open(dz_path).read()
    for line in open(index_path, encoding="utf-8", errors="replace"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        off, ln = b64num(parts[1]), b64num(parts[2])
        entry = raw[off : off + ln].decode("utf-8", errors="replace")
        paras = []
        for block in re.split(r"\n\s*\n", entry):
            p = clean_paragraph(" ".join(l.strip() for l in block.splitlines()))
            if good_paragraph(p):
                paras.append(p)
        if paras:
            entries.append((off, paras))
    entries.sort()
    del data
    docs, cur, size = [], [], 0
    for _, paras in entries:
        cur.extend(paras)
        size += sum(len(p) + 1 for p in paras)
        if size >= 3000:
            docs.append((f"{name}#{len(docs)}", cur))
            cur, size = [], 0
    if cur:
        docs.append((f"{name}#{len(docs)}", cur))
    return docs


def expand_braces(pattern):
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    out = []
    for alt in m.group(1).split(","):
        out.extend(expand_braces(pattern[: m.start()] + alt + pattern[m.end() :]))
    return out


def matching_files(root, pattern):
    """Files under root matching pattern ('**' = any depth), sorted, symlinks resolved and deduplicated."""
    regex = re.compile(
        "^" + re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*") + "$"
    )
    out = []
    for dirpath, _, files in os.walk(root):
        for fn in files:
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, root)
            if regex.match(rel) and os.path.isfile(full):
                out.append(rel)
    return sorted(out)


def main():
    tsv, unpack_dir, out_dir = sys.argv[1:4]
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for line in open(tsv, encoding="utf-8"):
        if line.startswith("#") or not line.strip():
            continue
        pkg, licence, includes, excludes = line.rstrip("\n").split("\t")
        rows.append((pkg, licence, re.split(r",(?![^{]*\})", includes), [] if excludes == "-" else excludes.split(",")))

    seen_paragraphs = set()
    seen_files = set()
    stats = {}
    train_f = open(os.path.join(out_dir, "corpus_train.jsonl"), "w", encoding="utf-8")
    eval_f = open(os.path.join(out_dir, "corpus_eval.jsonl"), "w", encoding="utf-8")
    all_docs = []
    for pkg, licence, includes, excludes in rows:
        root = os.path.join(unpack_dir, pkg)
        docs = []
        for inc in includes:
            for pattern in expand_braces(inc):
                if pattern.endswith(".dict.dz"):
                    docs.extend(dict_documents(os.path.join(root, pattern), pkg))
                    continue
                for rel in matching_files(root, pattern):
                    if any(x in "/" + rel for x in excludes):
                        continue
                    real = os.path.realpath(os.path.join(root, rel))
                    if real in seen_files:
                        continue
                    seen_files.add(real)
                    docs.append((f"{pkg}:{rel}", html_document(real)))
        all_docs.append((pkg, licence, docs))

    # boilerplate: short lines (headers, labels) that repeat across many pages
    short_counts = {}
    for _, _, docs in all_docs:
        for _, paras in docs:
            for p in set(paras):
                if len(p) < 40:
                    short_counts[p] = short_counts.get(p, 0) + 1
    boilerplate = {p for p, n in short_counts.items() if n >= 10}

    for pkg, licence, docs in all_docs:
        st = {"licence": licence, "docs_train": 0, "docs_eval": 0, "chars_train": 0, "chars_eval": 0,
              "dup_paragraphs": 0, "boilerplate_lines": 0, "short_docs": 0}
        for doc_id, paras in docs:
            kept = []
            for p in paras:
                if p in boilerplate:
                    st["boilerplate_lines"] += 1
                    continue
                if len(p) >= 40:  # only real paragraphs are deduplicated; short headings repeat naturally
                    if p in seen_paragraphs:
                        st["dup_paragraphs"] += 1
                        continue
                    seen_paragraphs.add(p)
                kept.append(p)
            text = "\n".join(kept)
            if len(text) < 300:
                st["short_docs"] += 1
                continue
            held_out = int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % 50 == 0
            rec = json.dumps({"id": doc_id, "package": pkg, "text": text}, ensure_ascii=False)
            (eval_f if held_out else train_f).write(rec + "\n")
            k = "eval" if held_out else "train"
            st["docs_" + k] += 1
            st["chars_" + k] += len(text)
        stats[pkg] = st
        print(f"{pkg:24s} train {st['chars_train']/1e6:7.2f} MB ({st['docs_train']} docs)  "
              f"held-out {st['chars_eval']/1e6:5.3f} MB ({st['docs_eval']} docs)  "
              f"dup paragraphs {st['dup_paragraphs']}", flush=True)
    train_f.close()
    eval_f.close()
    tot = {k: sum(s[k] for s in stats.values()) for k in ("docs_train", "docs_eval", "chars_train", "chars_eval", "dup_paragraphs")}
    print(f"{'total':24s} train {tot['chars_train']/1e6:7.2f} MB ({tot['docs_train']} docs)  "
          f"held-out {tot['chars_eval']/1e6:5.3f} MB ({tot['docs_eval']} docs)")
    versions_path = os.path.join(out_dir, "versions.tsv")
    if os.path.exists(versions_path):
        for line in open(versions_path, encoding="utf-8"):
            pkg, ver = line.rstrip("\n").split("\t")
            if pkg in stats:
                stats[pkg]["version"] = ver
    with open(os.path.join(out_dir, "corpus_stats.json"), "w") as f:
        json.dump({"packages": stats, "total": tot}, f, indent=1)


if __name__ == "__main__":
    main()

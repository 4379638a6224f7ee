#!/usr/bin/env python3
"""No function of the tree over 120 lines outside tests (docs/architecture.md).

Reads the C sources and headers (static inline functions) of gateway/, include/, plugins/ and
tools/ as clang-format writes them (.clang-format: a function's opening brace alone at the start
of a line, its closing brace likewise) and counts each function's lines from its signature to
its closing brace. Exit 0, or 1 naming each longer one.
"""
import os
import re
import sys

LIMIT = 120
DIRS = ("gateway", "include", "plugins", "tools")


def functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        if line != "{":
            continue
        # the signature: the lines above back to the one starting at column 0 with a name
        j = i - 1
        while j > 0 and lines[j] and (lines[j][0] in " \t" or not re.match(r"[A-Za-z_]", lines[j])):
            j -= 1
        sig = lines[j]
        if not re.match(r"[A-Za-z_].*\(", sig) or re.match(r"(struct|enum|union|typedef)\b", sig) \
                or "=" in sig.split("(")[0]:
            continue
        k = i + 1
        while k < len(lines) and lines[k] != "}":
            k += 1
        name = re.search(r"([A-Za-z_]\w*)\s*\(", sig)
        yield (name.group(1) if name else sig.strip()), j + 1, k - j + 1


def main(root):
    bad = 0
    for d in DIRS:
        for dp, _, fn in os.walk(os.path.join(root, d)):
            for f in sorted(fn):
                if not f.endswith((".c", ".h")):
                    continue
                p = os.path.join(dp, f)
                for name, line, n in functions(p):
                    if n > LIMIT:
                        print("%s:%d: %s is %d lines (at most %d)" % (os.path.relpath(p, root), line, name, n, LIMIT))
                        bad += 1
    if not bad:
        print("functions: none over %d lines in %s" % (LIMIT, ", ".join(DIRS)))
    return 1 if bad else 0


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(here))))

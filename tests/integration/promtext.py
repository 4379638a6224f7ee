"""promtext: a strict parser of the Prometheus text exposition format (version 0.0.4), for tests.

It follows the rules of Prometheus's own parser (prometheus/common expfmt) and of the format's
documentation, and is stricter where a sloppy exposition would still be read:

- lines end with "\\n"; the exposition ends with one; no empty lines, no trailing white space;
- "# HELP name text" and "# TYPE name type" (counter, gauge, histogram, summary, untyped): at
  most one of each per family, both before the family's first sample; TYPE is required here;
- a family's samples are contiguous (no family comes back after another one started);
- metric names [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]* (not __*), no label
  twice in one sample; label values in double quotes with the only escapes \\\\, \\" and \\n
  (any other backslash, a raw newline or an unterminated value is an error);
- values are floats (or +Inf, -Inf, NaN); an optional integer timestamp;
- no sample twice (same name and labels);
- counters: name ends in _total, value >= 0 and finite; gauges: any float;
- histograms: only NAME_bucket (with le), NAME_sum, NAME_count; per label set the le values
  are parseable, strictly ascending in order of appearance, the counts non-decreasing, "+Inf"
  present and equal to NAME_count, and NAME_sum present.

parse(text) returns {family: {"type", "help", "samples": [(name, {labels}, value)]}} or raises
ParseError naming the line.
"""

import math
import re

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class ParseError(AssertionError):
    pass


def _value(s, where):
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    if s == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", s):
        raise ParseError("%s: %r is not a number" % (where, s))
    return float(s)


def _labels(line, i, where):
    """Parses {a="b",...} starting at line[i] == '{'; returns (dict, index after '}')."""
    assert line[i] == "{"
    i += 1
    labels = {}
    while True:
        if i < len(line) and line[i] == "}":
            return labels, i + 1
        m = LABEL.match(line, i)
        if not m:
            raise ParseError("%s: bad label name at column %d" % (where, i + 1))
        name = m.group(0)
        if name.startswith("__"):
            raise ParseError("%s: reserved label name %r" % (where, name))
        if name in labels:
            raise ParseError("%s: label %r twice" % (where, name))
        i = m.end()
        if line[i:i + 2] != '="':
            raise ParseError("%s: expected =\" after label %r" % (where, name))
        i += 2
        out = []
        while True:
            if i >= len(line):
                raise ParseError("%s: unterminated value of label %r" % (where, name))
            c = line[i]
            if c == "\\":
                nxt = line[i + 1:i + 2]
                if nxt == "\\":
                    out.append("\\")
                elif nxt == '"':
                    out.append('"')
                elif nxt == "n":
                    out.append("\n")
                else:
                    raise ParseError("%s: bad escape \\%s in label %r" % (where, nxt, name))
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                out.append(c)
                i += 1
        labels[name] = "".join(out)
        if i < len(line) and line[i] == ",":
            i += 1
            if line[i:i + 1] == "}":  # a trailing comma is allowed by the format
                continue
        elif i < len(line) and line[i] == "}":
            continue
        else:
            raise ParseError("%s: expected , or } after label %r" % (where, name))


def _family_of(name, families):
    """The family a sample name belongs to (histogram/summary suffixes)."""
    if name in families:
        return name
    for suf in ("_bucket", "_sum", "_count"):
        if name.endswith(suf) and name[:-len(suf)] in families:
            return name[:-len(suf)]
    return name


def parse(text):
    if not text.endswith("\n"):
        raise ParseError("the exposition does not end with a newline")
    families = {}
    order = []  # families in order of first appearance
    closed = set()  # families whose samples are over
    current = None
    seen = set()
    for n, line in enumerate(text[:-1].split("\n"), 1):
        where = "line %d (%r)" % (n, line[:120])
        if line == "":
            raise ParseError("%s: empty line" % where)
        if line != line.rstrip():
            raise ParseError("%s: trailing white space" % where)
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                kind, name = parts[1], parts[2]
                if not NAME.fullmatch(name):
                    raise ParseError("%s: bad metric name" % where)
                f = families.setdefault(name, {"type": None, "help": None, "samples": []})
                if name not in order:
                    order.append(name)
                if f["samples"]:
                    raise ParseError("%s: %s after the family's samples" % (where, kind))
                key = kind.lower()
                if f[key] is not None:
                    raise ParseError("%s: a second %s line for %s" % (where, kind, name))
                rest = parts[3] if len(parts) > 3 else ""
                if kind == "TYPE":
                    if rest not in TYPES:
                        raise ParseError("%s: unknown type %r" % (where, rest))
                    f["type"] = rest
                else:
                    if re.search(r"\\[^\\n]", rest.replace("\\\\", "")):
                        raise ParseError("%s: bad escape in HELP" % where)
                    f["help"] = rest
            continue  # other comments are allowed
        m = NAME.match(line)
        if not m:
            raise ParseError("%s: bad metric name" % where)
        name = m.group(0)
        i = m.end()
        labels = {}
        if i < len(line) and line[i] == "{":
            labels, i = _labels(line, i, where)
        if line[i:i + 1] != " ":
            raise ParseError("%s: expected a space before the value" % where)
        fields = line[i + 1:].split(" ")
        if len(fields) not in (1, 2):
            raise ParseError("%s: expected a value and an optional timestamp" % where)
        value = _value(fields[0], where)
        if len(fields) == 2 and not re.fullmatch(r"-?\d+", fields[1]):
            raise ParseError("%s: bad timestamp" % where)
        fam = _family_of(name, families)
        f = families.get(fam)
        if f is None or f["type"] is None:
            raise ParseError("%s: sample of %s without a TYPE line before it" % (where, fam))
        if fam != current:
            if fam in closed:
                raise ParseError("%s: samples of %s are not together" % (where, fam))
            if current:
                closed.add(current)
            current = fam
        t = f["type"]
        if t in ("counter", "gauge", "untyped") and name != fam:
            raise ParseError("%s: %s sample named %s" % (where, t, name))
        if t == "histogram":
            if name == fam:
                raise ParseError("%s: a histogram sample needs _bucket, _sum or _count" % where)
            if (name == fam + "_bucket") != ("le" in labels):
                raise ParseError("%s: le belongs on _bucket samples only" % where)
        if t == "counter":
            if not fam.endswith("_total"):
                raise ParseError("%s: counter %s does not end in _total" % (where, fam))
            if not (value >= 0 and math.isfinite(value)):
                raise ParseError("%s: counter value %r" % (where, value))
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            raise ParseError("%s: the same sample twice" % where)
        seen.add(key)
        f["samples"].append((name, labels, value))
    for fam, f in families.items():
        if f["type"] == "histogram":
            _check_histogram(fam, f["samples"])
    return families


def _check_histogram(fam, samples):
    groups = {}
    for name, labels, value in samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        g = groups.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if name == fam + "_bucket":
            g["buckets"].append((labels["le"], value))
        elif name == fam + "_sum":
            g["sum"] = value
        else:
            g["count"] = value
    for rest, g in groups.items():
        what = "%s%s" % (fam, dict(rest))
        if not g["buckets"]:
            raise ParseError("%s: no buckets" % what)
        les = [_value(le, what) for le, _ in g["buckets"]]
        if any(b <= a for a, b in zip(les, les[1:])):
            raise ParseError("%s: le values not ascending: %s" % (what, [le for le, _ in g["buckets"]]))
        counts = [v for _, v in g["buckets"]]
        if any(b < a for a, b in zip(counts, counts[1:])):
            raise ParseError("%s: bucket counts decrease: %s" % (what, counts))
        if g["buckets"][-1][0] != "+Inf":
            raise ParseError("%s: no +Inf bucket last" % what)
        if g["count"] is None or g["sum"] is None:
            raise ParseError("%s: _count or _sum missing" % what)
        if g["count"] != counts[-1]:
            raise ParseError("%s: +Inf bucket %r != _count %r" % (what, counts[-1], g["count"]))


def value(families, name, **labels):
    """The value of the sample `name` whose labels include `labels` (0 when there is none);
    several matching samples are summed."""
    fam = _family_of(name, families)
    total = 0.0
    for n, ls, v in families.get(fam, {}).get("samples", []):
        if n == name and all(ls.get(k) == val for k, val in labels.items()):
            total += v
    return total

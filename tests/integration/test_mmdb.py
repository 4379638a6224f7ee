#!/usr/bin/env python3
"""gotthard-mmdb IN.csv OUT.mmdb: the site GeoIP database it builds is read by Debian's
`mmdblookup` (libmaxminddb) with the GeoIP2-Country path `country iso_code`: IPv4 (also as
::ffff:a.b.c.d) and IPv6, more specific networks win, addresses outside every network are not
found; every bad input line gives `IN.csv:LINE: message`, exit 1 and no output file.

The binary: $MMDB_BIN, else <repo>/build/tools/mmdb/gotthard-mmdb (nothing is built here)."""

import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402


def mmdb_bin():
    return gwtest._bin("MMDB_BIN", "tools/mmdb/gotthard-mmdb", "gotthard-mmdb")


def need_tools():
    gwtest._need_exec(mmdb_bin(), "gotthard-mmdb (MMDB_BIN)")
    if not shutil.which("mmdblookup"):
        gwtest.skip("mmdblookup not installed (Debian package mmdb-bin)")


def run(args, env=None, timeout=30):
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=e, timeout=timeout)
    out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    for m in gwtest.SANITIZER_MARKERS:
        assert m not in err, "sanitizer report from %s:\n%s" % (args[0], err[-3000:])
    return p.returncode, out, err


def build(csv_text, extra_args=(), env=None, d=None, name="site.csv"):
    """Writes csv_text to DIR/site.csv and runs gotthard-mmdb on it. Returns (rc, out, err, dir, in, out)."""
    need_tools()
    d = d or gwtest.tempdir("gwtest-mmdb-")
    src = os.path.join(d, name)
    with open(src, "w" if isinstance(csv_text, str) else "wb") as f:
        f.write(csv_text)
    dst = os.path.join(d, "site.mmdb")
    rc, out, err = run([mmdb_bin()] + list(extra_args) + [src, dst], env=env)
    return rc, out, err, d, src, dst


def build_ok(csv_text, extra_args=(), env=None):
    rc, out, err, d, src, dst = build(csv_text, extra_args, env)
    assert rc == 0, "gotthard-mmdb exited %d for good input; stdout %r stderr %r" % (rc, out, err)
    assert os.path.isfile(dst), "exit 0 but no output file %s" % dst
    return dst


def lookup(db, ip):
    """The country iso_code mmdblookup finds for ip, or None when the address is not found."""
    rc, out, err = run(["mmdblookup", "--file", db, "--ip", ip, "country", "iso_code"])
    if "Could not find an entry" in out + err:
        assert rc != 0, "mmdblookup exited 0 for a not found address %s" % ip
        return None
    assert rc == 0, "mmdblookup --ip %s exited %d; stdout %r stderr %r" % (ip, rc, out, err)
    m = re.search(r'"([^"]*)" <utf8_string>', out)
    assert m, "mmdblookup --ip %s printed no utf8_string: %r (stderr %r)" % (ip, out, err)
    return m.group(1)


def expect(db, table):
    wrong = []
    for ip, want in table:
        got = lookup(db, ip)
        if got != want:
            wrong.append("%s: expected %s, got %s" % (ip, want or "not found", got or "not found"))
    assert not wrong, "wrong lookups in %s:\n  %s" % (db, "\n  ".join(wrong))


SITE = """# gotthard site database
# private datacenter ranges

10.1.0.0/16,CH
10.1.2.0/24,DE
10.1.2.128/25,AT
127.0.0.1/32,CH
127.0.0.2/32,DE
192.168.0.0/16,CH
2001:db8::/32,CH
2001:db8:1::/48,DE
2001:db8:1:2::1/128,AT
fd00::/8,CH
"""

SITE_TABLE = [
    ("10.1.0.1", "CH"), ("10.1.255.255", "CH"), ("10.1.3.4", "CH"),
    ("10.1.2.0", "DE"), ("10.1.2.127", "DE"),           # the /24 inside the /16 wins
    ("10.1.2.128", "AT"), ("10.1.2.255", "AT"),         # and the /25 inside the /24
    ("127.0.0.1", "CH"), ("127.0.0.2", "DE"),
    ("127.0.0.3", None), ("127.0.0.0", None), ("10.2.0.0", None), ("10.0.255.255", None),
    ("8.8.8.8", None), ("0.0.0.0", None), ("255.255.255.255", None),
    ("192.168.77.1", "CH"),
    ("::ffff:10.1.3.4", "CH"), ("::ffff:10.1.2.5", "DE"), ("::ffff:10.1.2.200", "AT"),   # IPv4-mapped
    ("::ffff:127.0.0.2", "DE"), ("::ffff:127.0.0.3", None),
    ("2001:db8::1", "CH"), ("2001:db8:ffff:ffff::1", "CH"),
    ("2001:db8:1::1", "DE"), ("2001:db8:1:2::", "DE"), ("2001:db8:1:2::1", "AT"), ("2001:db8:1:2::2", "DE"),
    ("2001:db9::1", None), ("2001:db7:ffff::1", None), ("::1", None), ("fe80::1", None),
    ("fd12:3456::1", "CH"),
]


# --------------------------------------------------------------------------- good input


def test_lookups():
    expect(build_ok(SITE), SITE_TABLE)


def test_record_sizes():
    # The smallest record size that fits is chosen (24 here); 28 and 32 must read the same.
    for size in ("24", "28", "32"):
        db = build_ok(SITE, ["--record-size", size])
        rc, out, err = run(["mmdblookup", "--file", db, "--ip", "10.1.3.4", "--verbose"])
        assert re.search(r"Record size:\s+%s bits" % size, out), "record size %s not in metadata: %r" % (size, out)
        expect(db, SITE_TABLE)


def test_metadata():
    db = build_ok(SITE, env={"SOURCE_DATE_EPOCH": "1700000000"})
    rc, out, err = run(["mmdblookup", "--file", db, "--ip", "10.1.3.4", "--verbose"])
    assert rc == 0, "mmdblookup --verbose exited %d: %r %r" % (rc, out, err)
    for pat in (r"Node count:\s+[1-9]\d*", r"Record size:\s+24 bits", r"IP version:\s+IPv6",
                r"Binary format:\s+2\.0", r"Build epoch:\s+1700000000\b", r"Type:\s+\S*Country",
                r"Languages:\s+en", r"Description:\s*\n\s+en:\s+\S"):
        assert re.search(pat, out), "metadata does not match /%s/:\n%s" % (pat, out)
    # The whole record: {"country": {"iso_code": "CH"}}.
    assert re.search(r'"country":\s*\{\s*"iso_code":\s*"CH" <utf8_string>\s*\}', out), out


def test_reproducible():
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    a, b = build_ok(SITE, env=env), build_ok(SITE, env=env)
    with open(a, "rb") as f1, open(b, "rb") as f2:
        assert f1.read() == f2.read(), "two builds with the same SOURCE_DATE_EPOCH differ"


def test_default_routes_and_extremes():
    db = build_ok("0.0.0.0/0,DE\n10.0.0.0/8,CH\n10.9.9.9/32,AT\n"
                  "::/0,FR\n2001:db8::/32,CH\nffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128,IT\n")
    expect(db, [("1.2.3.4", "DE"), ("10.0.0.1", "CH"), ("10.9.9.9", "AT"), ("10.9.9.8", "CH"),
                ("255.255.255.255", "DE"), ("::ffff:1.2.3.4", "DE"), ("::ffff:10.9.9.9", "AT"),
                ("2001:db8::1", "CH"), ("2a00::1", "FR"), ("::1:0:0:1", "FR"),
                ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "IT"), ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", "FR")])


def test_only_ipv6_and_only_ipv4():
    expect(build_ok("2001:db8::/32,CH\n"), [("2001:db8::1", "CH"), ("10.0.0.1", None), ("::1", None)])
    expect(build_ok("10.0.0.0/8,CH\n"), [("10.0.0.1", "CH"), ("11.0.0.1", None), ("2001:db8::1", None)])


def test_lenient_whitespace_crlf_duplicates():
    # Spaces around fields, CRLF line ends, indented comments, and the same network with the
    # same country twice are accepted.
    db = build_ok("  # comment\r\n\r\n 10.1.0.0/16 , CH \r\n10.1.0.0/16,CH\r\n\t2001:db8::/32,DE\r\n")
    expect(db, [("10.1.2.3", "CH"), ("2001:db8::1", "DE")])


def test_overwrites_existing_output():
    rc, out, err, d, src, dst = build("10.0.0.0/8,CH\n")
    assert rc == 0, err
    rc, out, err, d, src, dst = build("10.0.0.0/8,DE\n", d=d)
    assert rc == 0, err
    expect(dst, [("10.0.0.1", "DE")])
    leftovers = [n for n in os.listdir(d) if n not in ("site.csv", "site.mmdb")]
    assert not leftovers, "temporary files left behind: %r" % leftovers


# --------------------------------------------------------------------------- bad input

GOOD_HEAD = "# site\n10.1.0.0/16,CH\n"      # the bad line is then line 3

BAD_LINES = [
    # (line, what the message must mention)
    ("10.1.0/16,CH", "10.1.0"),
    ("10.1.0.0.0/16,CH", "10.1.0.0.0"),
    ("300.1.0.0/16,CH", "300.1.0.0"),
    ("010.1.0.0/16,CH", "010.1.0.0"),
    ("2001:db8::g/32,CH", "2001:db8::g"),
    ("2001:db8:::/32,CH", "2001:db8:::"),
    ("fe80::%eth0/64,CH", "fe80"),
    ("hello,CH", "hello"),
    ("/8,CH", ""),
    ("10.2.0.0,CH", "prefix"),
    ("10.2.0.0/33,CH", "/33"),
    ("10.2.0.0/,CH", "prefix"),
    ("10.2.0.0/-1,CH", "/-1"),
    ("10.2.0.0/08,CH", "/08"),
    ("10.2.0.0/x,CH", "/x"),
    ("10.2.0.0/16/8,CH", "prefix"),
    ("2001:db8::/129,CH", "/129"),
    ("10.1.2.0/16,CH", "10.1.0.0/16"),              # host bits set: names the network
    ("10.2.0.1/31,CH", "10.2.0.0/31"),
    ("2001:db8::1/32,CH", "2001:db8::/32"),
    ("10.2.0.0/16,ch", "ch"),
    ("10.2.0.0/16,CHE", "CHE"),
    ("10.2.0.0/16,C", "C"),
    ("10.2.0.0/16,C1", "C1"),
    ("10.2.0.0/16,", "country"),
    ("10.2.0.0/16,Ch", "Ch"),
    ("10.2.0.0/16", "cidr,country"),
    ("10.2.0.0/16 CH", "cidr,country"),
    ("10.2.0.0/16,CH,extra", "field"),
    ("10.1.0.0/16,DE", "line 2"),                   # the same network, another country
    ("::ffff:10.1.0.0/112,DE", "line 2"),           # the same network, written as IPv4-mapped
]


def expect_rejected(csv_text, line, mention="", pre_existing=None):
    d = gwtest.tempdir("gwtest-mmdb-")
    dst = os.path.join(d, "site.mmdb")
    if pre_existing is not None:
        with open(dst, "wb") as f:
            f.write(pre_existing)
    rc, out, err, d, src, dst = build(csv_text, d=d)
    assert rc == 1, "exit %d (expected 1) for %r; stderr %r" % (rc, csv_text, err)
    if line is not None:
        prefix = "%s:%d: " % (src, line)
        hits = [ln for ln in err.splitlines() if ln.startswith(prefix) and ln[len(prefix):].strip()]
        assert hits, "no line '%s<message>' on stderr for %r; stderr %r" % (prefix, csv_text, err)
        assert mention.lower() in " ".join(hits).lower(), \
            "message %r does not mention %r" % (hits, mention)
    if pre_existing is None:
        assert not os.path.exists(dst), "output file left behind after an error (%r)" % csv_text
    else:
        with open(dst, "rb") as f:
            assert f.read() == pre_existing, "existing output changed by a failed build"
    leftovers = [n for n in os.listdir(d) if n not in ("site.csv", "site.mmdb")]
    assert not leftovers, "temporary files left behind: %r" % leftovers
    return err


def test_bad_lines():
    problems = []
    for bad, mention in BAD_LINES:
        try:
            expect_rejected(GOOD_HEAD + bad + "\n10.3.0.0/16,CH\n", 3, mention)
        except AssertionError as ex:
            problems.append(str(ex))
    assert not problems, "%d of %d bad lines not rejected properly:\n  %s" % (
        len(problems), len(BAD_LINES), "\n  ".join(problems))


def test_every_error_reported():
    err = expect_rejected("10.0.0.0/33,CH\n10.1.0.0/16,CH\n10.1.2.0/16,CH\n10.2.0.0/16,xx\n", 1, "/33")
    for n in (3, 4):
        assert re.search(r"site\.csv:%d: \S" % n, err), "line %d not reported: %r" % (n, err)
    assert not re.search(r"site\.csv:2:", err), "good line 2 reported: %r" % err


def test_failed_build_keeps_existing_output():
    expect_rejected("10.0.0.0/8,CH\n10.0.0.0/8,DE\n", 2, "line 1", pre_existing=b"old database")


def test_empty_input():
    expect_rejected("", None)
    expect_rejected("# only comments\n\n   \n", None)


def test_nul_byte():
    expect_rejected(b"10.0.0.0/8,CH\n10.1.0.0/16\0,CH\n", 2)


def test_missing_input_and_usage():
    need_tools()
    d = gwtest.tempdir("gwtest-mmdb-")
    dst = os.path.join(d, "out.mmdb")
    rc, out, err = run([mmdb_bin(), os.path.join(d, "missing.csv"), dst])
    assert rc == 1 and "missing.csv" in err, "missing input: rc %d, stderr %r" % (rc, err)
    assert not os.path.exists(dst)
    rc, out, err = run([mmdb_bin()])
    assert rc == 2 and "usage" in err, "no arguments: rc %d, stderr %r" % (rc, err)
    rc, out, err = run([mmdb_bin(), "--record-size", "20", "a", "b"])
    assert rc == 2, "--record-size 20: rc %d" % rc


def test_unwritable_output_dir():
    rc, out, err, d, src, dst = build("10.0.0.0/8,CH\n")
    missing_dir = os.path.join(d, "no", "such", "dir", "site.mmdb")
    rc, out, err = run([mmdb_bin(), src, missing_dir])
    assert rc == 1 and "site.mmdb" in err, "output into a missing directory: rc %d, stderr %r" % (rc, err)


if __name__ == "__main__":
    gwtest.run(globals())

#!/usr/bin/env python3
"""The suite's structural checks (tools/check/) can fail: each one runs on small fake trees in a
temporary folder, clean ones and ones with exactly one breach, and must tell them apart.

    python3 tests/lint/test_checks.py                 # every test
    python3 tests/lint/test_checks.py cycle_in_layer  # some, by name (without test_)

Prints PASS/FAIL per test and `N passed, N failed`; exit 1 if anything failed.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK = os.path.join(ROOT, "tools", "check")

# A tree that keeps every rule: one module per layer, each including only downwards.
CLEAN = {
    "include/gotthard/plugin.h": "/* the public plugin interface */\nint gw_plugin_abi(void);\n",
    "gateway/base/log.h": "/* log */\nvoid gw_log(const char *msg);\n",
    "gateway/base/log.c": '/* log */\n#include <stdio.h>\n\n#include "base/log.h"\n\n'
                          "void gw_log(const char *msg)\n{\n    puts(msg);\n}\n",
    "gateway/config/config.h": '/* config */\n#include "base/log.h"\n',
    "gateway/config/config.c": '/* config */\n#include "config/config.h"\n'
                               '#include "gotthard/plugin.h"\n',
    "gateway/io/conn.h": '/* conn */\n#include "config/config.h"\n',
    "gateway/io/conn.c": '/* conn */\n#include "io/conn.h"\n#include "base/log.h"\n',
    "gateway/store/redis.h": '/* redis */\n#include "io/conn.h"\n',
    "gateway/store/redis.c": '/* redis */\n#include "store/redis.h"\n',
    "gateway/proxy/request.h": '/* request */\n#include "store/redis.h"\n',
    "gateway/proxy/request.c": '/* request */\n#include "proxy/request.h"\n'
                               "/* gw_plugin_quota in a comment is no breach */\n",
    "gateway/ops/admin.h": '/* admin */\n#include "proxy/request.h"\n',
    "gateway/ops/admin.c": '/* admin */\n#include "ops/admin.h"\n#include "base/log.h"\n',
    "gateway/main.c": '/* main */\n#include "ops/admin.h"\n#include "io/conn.h"\n\n'
                      "int main(void)\n{\n    return 0;\n}\n",
    "plugins/quota/quota.h": "/* quota */\nint quota_limit(void);\n",
    "plugins/quota/quota.c": '/* quota */\n#include <stdlib.h>\n\n#include "gotthard/plugin.h"\n'
                             '#include "quota.h"\n\nint quota_limit(void)\n{\n    return 1;\n}\n',
    "plugins/example/example.c": '/* example */\n#include "gotthard/plugin.h"\n',
}


def make_tree(changes=None):
    """A temporary copy of CLEAN with changes (path -> text, or None to remove), and the root's
    .clang-format."""
    d = tempfile.mkdtemp(prefix="gwlint-")
    files = dict(CLEAN)
    files.update(changes or {})
    for rel, text in files.items():
        if text is None:
            continue
        p = os.path.join(d, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
    shutil.copy(os.path.join(ROOT, ".clang-format"), os.path.join(d, ".clang-format"))
    return d


def run_check(name, root):
    r = subprocess.run([sys.executable, os.path.join(CHECK, name + ".py"), root],
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def expect(name, changes, rc, *needles, forbid=()):
    """Runs check `name` on a fake tree; its exit status must be rc and its output hold every needle
    (and none of forbid). Returns the output."""
    d = make_tree(changes)
    try:
        got, out = run_check(name, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert got == rc, "%s: exit %d, expected %d; output:\n%s" % (name, got, rc, out)
    for n in needles:
        assert n in out, "%s: %r missing from the output:\n%s" % (name, n, out)
    for n in forbid:
        assert n not in out, "%s: %r in the output:\n%s" % (name, n, out)
    return out


# ------------------------------------------------------------------------------------ layers.py

def test_layers_clean_tree_passes():
    out = expect("layers", None, 0, "no upward include, no cycle")
    assert "13 files in 6 layers" in out, out


def test_layers_upward_include():
    expect("layers", {"gateway/io/conn.c": '#include "io/conn.h"\n#include "proxy/request.h"\n'}, 1,
           "gateway/io/conn.c (io) includes proxy/request.h (proxy): a lower layer may not include")


def test_layers_upward_include_from_header():
    expect("layers", {"gateway/base/log.h": '#include "ops/admin.h"\n'}, 1,
           "gateway/base/log.h (base) includes ops/admin.h (ops)")


def test_layers_cycle_in_one_layer():
    # proxy/request <-> proxy/upstream: both in proxy, so no upward include; only the cycle
    out = expect("layers", {
        "gateway/proxy/upstream.h": '#include "proxy/request.h"\n',
        "gateway/proxy/upstream.c": '#include "proxy/upstream.h"\n',
        "gateway/proxy/request.c": '#include "proxy/request.h"\n#include "proxy/upstream.h"\n',
    }, 1, "include cycle among: proxy/request proxy/upstream")
    assert "lower layer" not in out, out


def test_layers_cycle_through_three_modules():
    expect("layers", {
        "gateway/base/a.h": '#include "base/b.h"\n',
        "gateway/base/b.h": "",
        "gateway/base/b.c": '#include "base/c.h"\n',
        "gateway/base/c.h": "",
        "gateway/base/c.c": '#include "base/a.h"\n',
    }, 1, "include cycle among: base/a base/b base/c")


def test_layers_plugin_header_in_core():
    expect("layers", {"gateway/ops/admin.c": '#include "ops/admin.h"\n#include "quota.h"\n'}, 1,
           'gateway/ops/admin.c: includes "quota.h", a plugin\'s header')


def test_layers_plugin_header_by_path_or_brackets():
    expect("layers", {"gateway/io/conn.c": '#include "io/conn.h"\n'
                                           '#include "plugins/quota/quota.h"\n#include <quota.h>\n'},
           1, 'includes "plugins/quota/quota.h", a plugin\'s header', "includes <quota.h>, a plugin's")


def test_layers_plugin_table_named_in_core():
    expect("layers", {"gateway/config/plugin_host.c":
                      '#include "gotthard/plugin.h"\nextern const gw_plugin_t gw_plugin_quota;\n'}, 1,
           "gateway/config/plugin_host.c: names the plugin table gw_plugin_quota")


def test_layers_plugin_name_in_core():
    expect("layers", {"gateway/config/config.c": 'static const char *k = "example";\n'}, 1,
           'gateway/config/config.c: names the plugin "example"')


def test_layers_comment_markers_in_strings():
    # "*/*" (an Accept value) opens no comment: the include after it is still read
    expect("layers", {"gateway/ops/admin.c": '#include "ops/admin.h"\n'
                                             'static const char *any = "*/*";\n#include "quota.h"\n'
                                             'static const char *url = "http://x"; /* c */\n'}, 1,
           'gateway/ops/admin.c: includes "quota.h", a plugin\'s header')


def test_layers_core_words_only_where_listed():
    # CORE_WORDS lets store/backend_geo.c write its audit field "residency", and nothing else
    expect("layers", {"plugins/residency/residency.c": '#include "gotthard/plugin.h"\n',
                      "gateway/store/backend_geo.c": 'static const char *f = "residency";\n'}, 0)
    expect("layers", {"plugins/residency/residency.c": '#include "gotthard/plugin.h"\n',
                      "gateway/store/redis.c": 'static const char *f = "residency";\n'}, 1,
           'gateway/store/redis.c: names the plugin "residency"')


def test_layers_file_outside_every_layer():
    expect("layers", {"gateway/misc/x.c": "int x;\n"}, 1, "gateway/misc/x.c: outside every layer")


def test_layers_include_without_folder():
    expect("layers", {"gateway/io/conn.c": '#include "conn.h"\n'}, 1,
           'gateway/io/conn.c: includes "conn.h" without its folder (write "io/conn.h")')


def test_layers_main_may_include_every_layer():
    expect("layers", {"gateway/main.c": '#include "base/log.h"\n#include "config/config.h"\n'
                                        '#include "store/redis.h"\n#include "ops/admin.h"\n'}, 0)


def test_layers_plugin_includes_core_header():
    expect("layers", {"plugins/quota/quota.c": '#include "gotthard/plugin.h"\n#include "quota.h"\n'
                                               '#include "base/log.h"\n'}, 1,
           'plugins/quota/quota.c: includes "base/log.h": a plugin includes only gotthard/plugin.h',
           forbid=('"quota.h"', '"gotthard/plugin.h"'))


def test_layers_plugin_includes_core_header_in_brackets():
    expect("layers", {"plugins/example/example.c": "#include <gotthard/plugin.h>\n"
                                                   "#include <stdio.h>\n#include <base/log.h>\n"}, 1,
           "plugins/example/example.c: includes <base/log.h>, a header of gateway/",
           forbid=("<stdio.h>", "<gotthard/plugin.h>"))


def test_layers_plugin_includes_another_plugins_header():
    expect("layers", {"plugins/example/example.c": '#include "../quota/quota.h"\n'}, 1,
           'plugins/example/example.c: includes "../quota/quota.h"')


def test_layers_plugin_subfolder_header_allowed():
    expect("layers", {"plugins/quota/lua/scripts.h": "int n;\n",
                      "plugins/quota/lua/scripts.c": '#include "scripts.h"\n#include "../quota.h"\n'},
           0)


# --------------------------------------------------------------------------------- functions.py

def function_of(lines):
    """A C file with one function of exactly `lines` lines, signature to closing brace."""
    body = ["    x += %d;" % i for i in range(lines - 3)]
    return "/* f */\nint x;\n\nvoid long_one(void)\n{\n" + "\n".join(body) + "\n}\n"


def test_functions_120_lines_pass():
    expect("functions", {"gateway/proxy/request.c": function_of(120)}, 0, "none over 120 lines")


def test_functions_121_lines_fail():
    expect("functions", {"gateway/proxy/request.c": function_of(121)}, 1,
           "gateway/proxy/request.c:4: long_one is 121 lines (at most 120)")


def test_functions_plugins_tools_and_headers_counted():
    inline = function_of(130).replace("void long_one", "static inline void long_one")
    out = expect("functions", {"plugins/quota/quota.c": function_of(125),
                               "tools/mmdb/mmdb.c": function_of(122),
                               "include/gotthard/plugin.h": inline}, 1,
                 "plugins/quota/quota.c:4: long_one is 125 lines",
                 "tools/mmdb/mmdb.c:4: long_one is 122 lines",
                 "include/gotthard/plugin.h:4: long_one is 130 lines")


def test_functions_multiline_signature():
    text = function_of(121).replace("void long_one(void)", "static int long_one(int a,\n"
                                    "                    int b)")
    expect("functions", {"gateway/base/log.c": text}, 1, "gateway/base/log.c:4: long_one is 122 lines")


def test_functions_tests_not_counted():
    expect("functions", {"tests/unit/base/test_log.c": function_of(300)}, 0)


# ----------------------------------------------------------------------------------- format.py

def test_format_clean_tree_passes():
    expect("format", None, 0, "formatted as .clang-format says")


def test_format_misformatted_file_fails():
    expect("format", {"gateway/base/log.c": "/* log */\nvoid gw_log(const char *msg) { puts(msg);}\n"},
           1, "gateway/base/log.c", "clang-format -i")


def test_format_misformatted_header_fails():
    expect("format", {"plugins/quota/quota.h": "int  quota_limit( void );\n"}, 1, "quota.h")


def test_format_build_trees_skipped():
    expect("format", {"build/gen/x.c": "int  x ;\n", "build-test/y.h": "int  y ;\n"}, 0)


def test_format_git_tree_checks_tracked_files():
    d = make_tree({"gateway/base/log.c": "/* log */\nvoid gw_log(const char *msg) { puts(msg);}\n",
                   "build/x.c": "int  x ;\n"})
    try:
        env = dict(os.environ, GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
        subprocess.run(["git", "init", "-q", d], check=True, env=env)
        subprocess.run(["git", "-C", d, "add", "gateway", "plugins", "include", ".clang-format"],
                       check=True, env=env)
        rc, out = run_check("format", d)
        assert rc == 1 and "gateway/base/log.c" in out and "build/x.c" not in out, out
        # the same file fixed in the work tree: tracked files are read from the work tree
        with open(os.path.join(d, "gateway/base/log.c"), "w") as f:
            f.write(CLEAN["gateway/base/log.c"])
        rc, out = run_check("format", d)
        assert rc == 0, out
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_format_missing_clang_format_fails():
    d = make_tree()
    try:
        r = subprocess.run([sys.executable, os.path.join(CHECK, "format.py"), d], capture_output=True,
                           text=True, env=dict(os.environ, PATH="/nonexistent", CLANG_FORMAT=""))
        assert r.returncode == 1 and "clang-format not found" in r.stdout, r.stdout + r.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------ the tree

def test_the_fake_clean_tree_is_itself_formatted():
    # the clean tree above must pass the format check, or the format tests prove nothing
    expect("format", None, 0)


def run(tests, names):
    chosen = [(n, f) for n, f in sorted(tests.items()) if n.startswith("test_") and callable(f)
              and (not names or n in names or n[5:] in names)]
    passed = failed = 0
    for name, f in chosen:
        t0 = time.monotonic()
        try:
            f()
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
            failed += 1
            print("FAIL %s: %s" % (name, str(e).split("\n")[0]))
            detail = str(e) if isinstance(e, AssertionError) else traceback.format_exc()
            for line in detail.split("\n")[1:]:
                print("    " + line)
        else:
            passed += 1
            print("PASS %s (%.2fs)" % (name, time.monotonic() - t0))
    print("%d passed, %d failed" % (passed, failed))
    if names and not chosen:
        print("no test named %s" % " ".join(names))
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run(globals(), sys.argv[1:]))

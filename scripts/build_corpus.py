"""Rebuild data/corpus/ from Debian's libreoffice-help-XX packages (needs apt-get and dpkg-deb).

    python scripts/build_corpus.py [--out data/corpus] [--languages en de ru ja fr es zh] [--max-per-language N]

Same as `mergedistill corpus build`. Run `apt-get update` once first on a fresh machine.
"""

import sys

from mergedistill.cli import main

if __name__ == "__main__":
    sys.exit(main(["corpus", "build", *sys.argv[1:]]))

"""`mergedistill corpus`: statistics of the embedded corpus, and its rebuild from Debian packages."""

HELP = "corpus statistics (stats) and rebuild from Debian's libreoffice-help packages (build)"


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    stats = sub.add_parser("stats", help="paragraph/character counts per language and split, module labels")
    stats.add_argument("--corpus-dir", default=None, help="corpus directory (default: the embedded data/corpus)")
    build = sub.add_parser("build", help="rebuild the corpus (apt-get download + dpkg-deb -x + HTML parsing)")
    build.add_argument("--out", default=None, help="output directory (default: the embedded data/corpus)")
    build.add_argument("--languages", nargs="+", default=None, help="language codes (default: en de ru ja fr es zh)")
    build.add_argument("--max-per-language", type=int, default=None, help="subsample by id hash, keeping alignment")


def main(args):
    from mergedistill import corpus

    if args.action == "stats":
        print(corpus.format_stats(corpus.stats(args.corpus_dir)))
        return 0
    from mergedistill.corpus_build import build_corpus

    manifest = build_corpus(args.out or corpus.EMBEDDED_CORPUS_DIR, args.languages, args.max_per_language)
    for lang, counts in manifest["splits"].items():
        print(lang, " ".join(f"{split}={n}" for split, n in counts.items()))
    return 0

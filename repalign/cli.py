"""The ``repalign`` command line: one subcommand per verb, each a thin layer over the Python API.

Errors in user input print one line (``repalign: error: ...``) and exit with status 1; ``--debug``
shows the traceback instead. Each subcommand imports the modules it runs when it runs (marked
"lazy: CLI start-up"), so ``repalign --help`` does not load numpy, pandas, h5py or matplotlib.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import stat
import sys
import warnings

from repalign import __version__
from repalign.errors import RepalignError, RepalignWarning

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _flat(values) -> list[str]:
    """Flatten repeated/space/comma separated option values: --metric mknn cka --metric cknna,svcca."""
    out: list[str] = []
    for v in values or []:
        items = v if isinstance(v, list) else [v]
        for item in items:
            out.extend(x for x in item.split(",") if x)
    return out


def _options(pairs) -> dict[str, str]:
    opts = {}
    for pair in _flat(pairs):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RepalignError(f"--option {pair!r} is not KEY=VALUE; write e.g. --option loops=last")
        opts[key.strip()] = value.strip()
    return opts


#: endings of the files that commands take as positional arguments (inputs, caches, tables, feature
#: files): a value of a several-word flag with one of them was meant as that positional argument
POSITIONAL_SUFFIXES = (".fasta", ".fa", ".faa", ".fas", ".csv", ".tsv", ".gz", ".h5", ".hdf5", ".parquet", ".pdb",
                       ".cif", ".mmcif", ".xyz", ".extxyz", ".sdf", ".mol", ".mol2", ".poscar", ".vasp", ".npy", ".npz",
                       ".pt", ".h5ad")
#: what a flag naming input files (``--inputs``) refuses: the cache of ``compare``, the feature file of ``cache import``
CACHE_SUFFIXES = (".h5", ".hdf5")
FEATURE_SUFFIXES = (".npy", ".npz", ".pt", ".h5", ".hdf5", ".h5ad", ".parquet")


class ArgumentTrap(RepalignError):
    """A several-word flag took a word meant as a positional argument (``--layers a b x.fasta``)."""


class SeveralValues(argparse.Action):
    """``action="append", nargs="+"`` that refuses a value looking like the command's positional argument.

    argparse gives a several-word flag every word up to the next flag, so ``extract x.fasta --layers a
    y.fasta`` would read ``y.fasta`` as a layer. ``paths``: the flag's own values are files (``--inputs``),
    and only those ending in one of ``paths`` (the positional's kind, e.g. a cache) are refused.
    """

    def __init__(self, option_strings, dest, positional: str = "inputs", paths: tuple[str, ...] | None = None, **kwargs):
        self.positional, self.paths = positional, paths
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        for value in values:
            if self._swallowed(value):
                flag = option_string or self.option_strings[-1]
                raise ArgumentTrap(f"{flag} took {value!r}, which looks like the {self.positional}: {flag} takes every "
                                   f"word up to the next flag; put {value} before {flag}")
        given = getattr(namespace, self.dest, None) or []
        setattr(namespace, self.dest, [*given, *values] if self.paths is not None else [*given, list(values)])

    def _swallowed(self, value: str) -> bool:
        if self.paths is not None:
            return value.lower().endswith(self.paths)
        if "=" in value:  # KEY=VALUE, MODEL=LAYER
            return False
        return value == "-" or value.lower().endswith(POSITIONAL_SUFFIXES) or os.path.exists(value)


def check_output_file(path, flag: str) -> None:
    """An output file path must not name a folder or a special file (checked before any work)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RepalignError(f"{flag} {path}: {exc.strerror}; choose another output path") from None
    if stat.S_ISDIR(st.st_mode):
        raise RepalignError(f"{flag} {path} is a folder; give a file name inside it, e.g. {os.path.join(path, 'scores.csv')}")
    if not stat.S_ISREG(st.st_mode):
        raise RepalignError(f"{flag} {path} is not a regular file; choose another output path")


#: library wording -> command-line wording, for messages shown to CLI users
_CLI_WORDING = {
    "pass overwrite=True": "pass --overwrite",
    "with overwrite=True": "with --overwrite",
    "max_member_bytes=": "--max-member-size ",
    "store_dtype='float32'": "--store-dtype float32",
    "use dtype='float32'": "use --store-dtype float32",  # CacheWriter(dtype=): the storage dtype
    "repalign.zoo.model_table()": "'repalign models --layers'",
    "options key ": "--option ",
    # the figure functions' and tables' hints (repalign plot, repalign report)
    "repalign.compare.compare_controls": "'repalign compare --controls SEEDS'",
    "repalign.compare.compare_curves": "'repalign compare --n-samples N,N,...'",
    "kind='layers'": "--kind layers",
    "formats='png,pdf,svg'": "--format png,pdf,svg",
    "sizes={'MODEL': NUMBER}": "--size MODEL=NUMBER",
    "permutations=N": "--permutations N",
    "value='score'": "without --calibrated",
    "metric=NAME": "--metric NAME",
}


#: Python parameter of extract, import_features, export_features and repool -> its flag: words their
#: messages (``pool='mean'``, ``skip_invalid=True``, ``layers=[a, b]``, ``options={'k': 'v'}``) as flags
EXTRACT_FLAGS = {
    "pool": "--pool", "skip_invalid": "--skip-invalid", "overwrite": "--overwrite", "batch_tokens": "--batch-tokens",
    "limit": "--limit", "weights": "--weights", "tokens": "--tokens", "layers": "--layers", "dtype": "--dtype",
    "store_dtype": "--store-dtype", "device": "--device", "ids": "--ids", "inputs": "--inputs", "options": "--option",
}


def cli_message(exc: BaseException, command: str | None = None) -> str:
    """First line of an error, with Python parameter names replaced by the matching flags (those of
    :data:`EXTRACT_FLAGS` for ``extract``, ``cache`` and ``models``)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for python, flag in _CLI_WORDING.items():
        text = text.replace(python, flag)
    return extract_wording(text) if command in ("extract", "cache", "models") else text


def extract_wording(text: str) -> str:
    """``text`` with each ``name=VALUE`` of :data:`EXTRACT_FLAGS` as its flag: ``True`` as the bare flag,
    quotes and list brackets dropped, ``options={'k': 'v'}`` as ``--option k=v``."""
    def flag(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if name == "options" and value.startswith("{"):
            pairs = re.findall(r"'([^']*)':\s*'([^']*)'", value)
            return " ".join(f"--option {k}={v}" for k, v in pairs) or "--option"
        value = "" if value == "True" else re.sub(r"[\[\]']", "", value).replace(", ", " ")
        return f"{EXTRACT_FLAGS[name]} {value}".rstrip()

    names = "|".join(sorted(EXTRACT_FLAGS, key=len, reverse=True))
    return re.sub(rf"(?<![\w'.-])({names})=(True\b|'[^']*'|\[[^\]]*\]|\{{[^}}]*\}}|[^\s;,)]*)", flag, text)


def system_error_text(exc: BaseException) -> str:
    """An OSError or MemoryError in the user's words: the file and what the system said, no class name."""
    if isinstance(exc, MemoryError):
        return "out of memory; use a smaller input or --block-rows / --batch-tokens where the command has them"
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return f"{where}{exc.strerror}"
    return str(exc).splitlines()[0] if str(exc) else "system error"


# ---- subcommands ------------------------------------------------------------------------------------


def cmd_compare(args) -> int:
    from repalign.compare import EngineOptions, StatsOptions, TokenOptions, compare_curves, compare_models, compare_tokens  # lazy: CLI start-up
    from repalign.compare.controls import compare_controls  # lazy: CLI start-up
    from repalign.table import check_table_path, write_settings, write_table  # lazy: CLI start-up

    to_stdout = args.output == "-"  # the table goes to stdout, so everything else goes to stderr
    if args.output and not to_stdout:
        check_output_file(args.output, "-o")
        check_table_path(args.output)  # fail before computing anything
    token_flags = [COMPARE_FLAGS[name] for name in ("max_tokens", "group_by", "inputs", "subsample")
                   if getattr(args, name) is not None]
    if token_flags and not args.tokens:
        raise RepalignError(f"{token_flags[0]} applies to token rows; add --tokens")
    if args.search_block is not None and args.tokens:
        raise RepalignError("--search-block applies to --cluster comparisons of pooled layers; drop it with --tokens")
    if args.tokens and args.cluster:
        raise RepalignError("--tokens runs in this process; drop --cluster (use --block-rows for large token layers)")
    if args.anchors is not None and args.tokens:
        raise RepalignError("--anchors compares pooled layers; drop --tokens (or --anchors)")
    ks: list[int] = _whole_numbers(args.k, "--k") or [10]  # --k has a default: never empty
    sizes = _whole_numbers(args.n_samples, "--n-samples")
    curves = sizes is not None or len(ks) > 1  # scores across N and k: repalign.compare.compare_curves
    if args.repeats is not None and sizes is None:
        raise RepalignError("--repeats sets the subsets drawn per size of --n-samples; add --n-samples (or drop --repeats)")
    if curves and args.tokens:
        raise RepalignError("--n-samples and several --k values compare pooled layers; drop --tokens (or them)")
    if args.controls is not None and (args.tokens or curves):
        raise RepalignError(f"--controls compares pooled layers on all shared samples at one k; drop "
                            f"{'--tokens' if args.tokens else '--n-samples and the extra --k values'} (or --controls)")
    metrics = _flat(args.metric) or ["mknn"]
    layers = dict(layers_a=_flat(args.layers_a), layers_b=_flat(args.layers_b))
    with flag_wording():
        engine = EngineOptions(**_compare_options(args, EngineOptions))
        stats = StatsOptions(**_compare_options(args, StatsOptions))
        params = dict(kernel=args.kernel, sigma=args.sigma, dim=args.dim, variance=args.variance, whitening=args.whitening,
                      rdm=args.rdm, compare=args.rdm_compare)
        if curves:
            result = compare_curves((args.cache, args.cache_b), args.a, args.b, metrics, ks=ks, sizes=sizes,
                                    repeats=5 if args.repeats is None else args.repeats, engine=engine, stats=stats,
                                    **layers, **params)
        elif args.controls is not None:
            result = compare_controls((args.cache, args.cache_b), args.a, args.b, metrics, args.controls, engine=engine,
                                      stats=stats, **layers, k=ks[0], **params)
        elif args.tokens:
            tokens = TokenOptions(**_compare_options(args, TokenOptions))
            result = compare_tokens((args.cache, args.cache_b), args.a, args.b, metrics, tokens=tokens, engine=engine,
                                    stats=stats, **layers, k=ks[0], **params)
        else:
            result = compare_models((args.cache, args.cache_b), args.a, args.b, metrics, engine=engine, stats=stats,
                                    **layers, k=ks[0], **params)
    messages = sys.stderr if to_stdout else sys.stdout
    print(result.summary(with_warnings=False), file=messages)  # the warnings went to stderr as they came
    if "note" in result.table:  # e.g. --ci on a metric without a valid interval: say so, not only in a column
        for note in sorted({n for n in result.table["note"].dropna() if n}):
            print(f"repalign: note: {note}", file=sys.stderr)
    if args.output:
        path = write_table(result.table, args.output)
        if not to_stdout:  # beside the table: what 'repalign report TABLE' renders it with
            write_settings(path, compare_settings(args, metrics, ks, stats))
        print(f"wrote {len(result.table)} rows to {'standard output' if to_stdout else path}", file=messages)
    return 0


def compare_settings(args, metrics: list, ks: list, stats) -> dict:
    """The settings of a ``repalign compare`` run, written beside its table (``<table>.settings.json``)."""
    given = {name: value for name, value in sorted(vars(args).items())
             if value not in (None, False, []) and name not in ("func", "command", "output", "quiet")
             and isinstance(value, (str, int, float, list))}
    return {"made_by": f"repalign {__version__}", "source": "compare", "cache": args.cache, "model_a": args.a,
            "model_b": args.b, "metrics": metrics, "k": ks[0] if len(ks) == 1 else ks, "permutations": stats.permutations,
            "seed": stats.seed, "layer_family": stats.layer_family, "ci": stats.ci, "options": given}


#: Python parameter of repalign.compare (option objects, metrics) -> its `repalign compare` flag: builds the
#: option objects from the flags, and words the library's errors with the flags
COMPARE_FLAGS = {
    "normalize": "--normalize", "knn": "--knn", "block_rows": "--block-rows", "engine": "--engine", "device": "--device",
    "anchors": "--anchors", "cluster": "--cluster", "search_block": "--search-block",
    "permutations": "--permutations", "ci": "--ci", "n_subsamples": "--subsamples", "fraction": "--fraction",
    "seed": "--seed", "layer_family": "--layer-family", "max_tokens": "--max-tokens", "subsample": "--subsample", "group_by": "--group-by",
    "inputs": "--inputs", "metrics": "--metric", "layers_a": "--layers-a", "layers_b": "--layers-b",
    "whitening": "--whitening", "ks": "--k", "sizes": "--n-samples", "repeats": "--repeats", "seeds": "--controls",
}
#: the flag values that differ from the Python values
_COMPARE_VALUES: dict = {"normalize": {"none": None}, "anchors": lambda v: _anchors(v)}


def _compare_options(args, cls) -> dict:
    """The fields of option class ``cls`` that are flags of ``repalign compare``, from ``args``."""
    out = {}
    for f in dataclasses.fields(cls):
        flag = COMPARE_FLAGS.get(f.name)
        given = getattr(args, flag[2:].replace("-", "_"), None) if flag else None
        if given is None:  # not a flag, or not given: the field's default
            continue
        convert = _COMPARE_VALUES.get(f.name)
        out[f.name] = convert(given) if callable(convert) else convert.get(given, given) if convert else given
    return out


@contextlib.contextmanager
def flag_wording():
    """Errors raised inside name the flags of ``repalign compare`` instead of the Python parameters."""
    try:
        yield
    except RepalignError as exc:
        exc.args = (compare_wording(str(exc)), *exc.args[1:])
        raise


def compare_wording(text: str) -> str:
    """``text`` with each Python parameter of :data:`COMPARE_FLAGS` as its flag (``knn='exact'`` as ``--knn exact``)."""
    for name in sorted(COMPARE_FLAGS, key=len, reverse=True):
        text = re.sub(rf"(?<![\w'.-]){name}(?:=('[^']*'|[^\s;,)]+))?(?![\w'(])",
                      lambda m: COMPARE_FLAGS[name] + (f" {m.group(1).strip(chr(39))}" if m.group(1) else ""), text)
    return text


def _whole_numbers(text: str | None, flag: str) -> list[int] | None:
    """A comma-separated list of whole numbers (``--k 5,10,25``), as ints; None when not given."""
    if text is None:
        return None
    items = [x.strip() for x in str(text).split(",")]
    if not all(re.fullmatch(r"-?\d+", x) for x in items):
        raise RepalignError(f"{flag} {text!r} is not a comma-separated list of whole numbers; write e.g. {flag} 5,10,25")
    return [int(x) for x in items]


def _anchors(value: str | None):
    """``--anchors``: a number of anchor samples, or a file of anchor ids (one per line)."""
    if value is None:
        return None
    if value.strip().lstrip("-").isdigit():
        return int(value)
    from repalign.interop import read_id_list  # lazy: CLI start-up

    return read_id_list(value)


def cmd_cache_info(args) -> int:
    from embeddings_cache import Cache  # lazy: CLI start-up

    with Cache(args.cache) as cache:
        print(json.dumps(cache.info(), indent=1, default=str) if args.json else cache.describe())
    return 0


def _size(text: str | None) -> int | None:
    """``--max-member-size``: bytes, or a number with K, M, G or T (powers of 1024; ``8G``, ``8GiB``)."""
    if text is None:
        return None
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = 1
    if value[-1:] in ("K", "M", "G", "T"):
        scale = 1024 ** ("KMGT".index(value[-1]) + 1)
        value = value[:-1]
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 < number < float("inf"):  # inf and nan are not sizes (int() of them would raise)
        raise RepalignError(f"--max-member-size {text!r} is not a size; give bytes or e.g. 8G")
    return int(number * scale)


def cmd_cache_import(args) -> int:
    from repalign.inputs import read_inputs  # lazy: CLI start-up
    from repalign.interop import import_features, read_id_list  # lazy: CLI start-up

    if args.inputs and args.ids:
        raise RepalignError("give --inputs (ids and content hashes) or --ids (ids only), not both")
    records = read_inputs(args.inputs) if args.inputs else None
    ids = read_id_list(args.ids) if args.ids else None
    run = import_features(args.file, args.output, args.model, inputs=records, ids=ids, layers=_flat(args.layers) or None,
                          pool=args.pool, keep_tokens=not args.no_tokens, store_dtype=args.store_dtype,
                          overwrite=args.overwrite, max_member_bytes=_size(args.max_member_size),
                          compression=args.compression)
    tokens = f" (+ {len(run.token_layers)} token layers)" if run.token_layers else ""
    resumed = f", {run.resumed} of them stored by the interrupted run" if run.resumed else ""
    print(f"{run.model}: stored {run.n_samples} samples x {len(run.layers)} layers{tokens} from {run.format} "
          f"{args.file} (ids from {run.ids_from}{resumed}) -> {args.output}")
    return 0


def cmd_cache_export(args) -> int:
    from repalign.interop import export_features  # lazy: CLI start-up

    path = export_features(args.cache, args.model, args.output, layers=_flat(args.layers) or None,
                           overwrite=args.overwrite, max_member_bytes=_size(args.max_member_size))
    print(f"wrote model {args.model} to {path}")
    return 0


def cmd_cache_repool(args) -> int:
    from repalign.pooling import repool  # lazy: CLI start-up

    run = repool(args.cache, args.model, args.pool, name=args.name, layers=_flat(args.layers) or None,
                 overwrite=args.overwrite)
    print(f"{run.model}: {run.pool}-pooled {run.stored} samples x {len(run.layers)} layers of {run.source} "
          f"({run.skipped_existing} already there) -> {args.cache}")
    return 0


def cmd_extract(args) -> int:
    from repalign.extract import extract  # lazy: CLI start-up
    from repalign.extract_options import ExtractOptions
    from repalign.inputs import read_inputs

    check_no_model_among_inputs(args.inputs, args.model)
    options = _options(args.option)
    if args.loops:
        options["loops"] = args.loops
    records = read_inputs(args.inputs, skip_invalid=args.skip_invalid)
    settings = ExtractOptions(
        layers=_flat(args.layers) or None, pool=args.pool, tokens=_flat(args.tokens),
        device=args.device, dtype=args.dtype, store_dtype=args.store_dtype, compression=args.compression,
        batch_tokens=args.batch_tokens,
        limit=args.limit, overwrite=args.overwrite, skip_invalid=args.skip_invalid, weights=args.weights,
        options=options, quiet=args.quiet,
    )
    if args.dry_run:
        return print_extraction_plan(records, _flat(args.model), args.output, settings)
    if args.cluster:
        from repalign.distributed import extract_distributed  # lazy: CLI start-up

        runs = extract_distributed(records, _flat(args.model), args.output, cluster=args.cluster, settings=settings)
    else:
        runs = extract(records, _flat(args.model), args.output, settings)
    for run in runs:
        rate = f", {run.tokens / run.seconds:,.0f} tokens/s" if run.seconds > 0 else ""
        print(f"{run.model}: stored {run.stored} samples x {len(run.layers)} layers "
              f"({run.skipped_existing} already in the cache{rate}) -> {args.output}")
        if run.invalid:
            print(f"{run.model}: skipped {len(run.invalid)} invalid samples: {', '.join(sorted(run.invalid))}")
        if run.retries:
            print(f"{run.model}: {len(run.retries)} batches split after out-of-memory errors "
                  f"(features do not depend on the batch)")
    return 0


def check_no_model_among_inputs(inputs: list[str], models: list[str]) -> None:
    """``extract --model a b x.fasta`` leaves ``b`` among the inputs (--model takes one name): name the fix."""
    from repalign.models import REGISTRY  # lazy: CLI start-up

    for item in inputs:
        if item != "-" and not os.path.exists(item) and (item.split("@")[0] in REGISTRY or item.startswith("hf:")):
            given = " ".join(f"--model {m}" for m in [*models, item])
            raise RepalignError(f"input {item!r} is a model name, not a file: --model takes one name each; write {given}")


def print_extraction_plan(records, models, output, settings) -> int:
    """``extract --dry-run``: the plan, without loading weights or writing anything."""
    from repalign.extract_batches import format_plan, plan_extraction  # lazy: CLI start-up

    print(format_plan(plan_extraction(records, models, output, settings), output))
    return 0


def cmd_models(args) -> int:
    from repalign.zoo import describe_models, model_table  # lazy: CLI start-up

    models = _flat(args.model) or None
    if args.weights is not None and len(models or []) != 1:
        raise RepalignError("--weights is checked for one model; name it with --model NAME")
    if args.json:
        print(json.dumps(model_table(models, args.weights), indent=1))
    else:
        print(describe_models(show_layers=args.layers, models=models, weights=args.weights))
    return 0


def cmd_demo(args) -> int:
    from repalign.demo import run_demo  # lazy: CLI start-up

    run_demo(args.output, quiet=args.quiet)
    return 0


def cmd_plot(args) -> int:
    from repalign.plot import figure_options, plot_table  # lazy: CLI start-up
    from repalign.table import granularity_rows, n_samples_rows, read_table  # lazy: CLI start-up

    options = figure_options(
        args.kind, metric=args.metric, a=args.a, b=args.b, layer_b=args.layer_b, width=args.width,
        scale=args.scale, calibrated=args.calibrated, alpha=args.alpha, order=args.order,
        layers=_options(args.layer), sizes=_options(args.size),
    )
    table = read_table(args.table)
    if args.granularity:
        table = granularity_rows(table, args.granularity)
    table = n_samples_rows(table, args.n_samples)
    for path in plot_table(table, args.output, args.kind, args.format, **options):
        print(f"wrote {path}")
    return 0


def cmd_profile(args) -> int:
    from repalign.profile import profile_layers  # lazy: CLI start-up
    from repalign.table import check_table_path, write_table  # lazy: CLI start-up

    if args.output != "-":
        check_output_file(args.output, "-o")
        check_table_path(args.output)  # fail before computing anything
    table = profile_layers(args.cache, args.model, args.measure, layers=_flat(args.layers) or None,
                           normalize=None if args.normalize == "none" else args.normalize,
                           method=args.method, fraction=args.fraction, k=args.k)
    messages = sys.stderr if args.output == "-" else sys.stdout
    for row in table.itertuples():
        print(f"{row.model} {row.layer}: {row.measure} = {row.value:.4g} ({row.params}; N = {row.n_samples})", file=messages)
    path = write_table(table, args.output)
    print(f"wrote {len(table)} rows to {'standard output' if args.output == '-' else path}", file=messages)
    return 0


def cmd_report(args) -> int:
    from repalign.report import build_report, is_table_path  # lazy: CLI start-up

    if is_table_path(args.source):
        given = [flag for flag, value in (("--metric", args.metric), ("--k", args.k), ("--permutations", args.permutations),
                                          ("--seed", args.seed)) if value is not None]
        if given:
            raise RepalignError(f"{', '.join(given)} apply to a cache; a table is rendered with the settings it was "
                                "made with (drop them, or give the cache)")
    path = build_report(args.source, args.output, metrics=_flat(args.metric) or None, k=args.k,
                        permutations=args.permutations, seed=args.seed or 0, force=args.force, quiet=args.quiet)
    print(f"wrote {path}")
    return 0


PROGRESS_HELP = ("progress bars (counts, rate, ETA) on standard error: --progress always, --no-progress never; "
                 "default: only when standard error is a terminal; -q: never")


def progress_flag(parser: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress`` after the subcommand too (the value before it is kept when not given here)."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=PROGRESS_HELP)


COMPRESSION_HELP = ("compression of new models: gzip (every HDF5 tool reads it), lzf (faster; h5py or the lzf "
                    "plugin reads it), none; default: gzip in a new cache, the cache's own in an existing one")

# ---- parser -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="repalign",
        description="Layer-by-layer representational alignment of scientific foundation models.",
    )
    p.add_argument("--version", action="version", version=f"repalign {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help=PROGRESS_HELP)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    e = sub.add_parser("extract", help="run models over inputs and store layer features in a cache")
    e.add_argument("inputs", nargs="+", help="FASTA, CSV (id + sequence/path), structure files or folders")
    e.add_argument("--model", "-m", action="append", required=True,
                   help="registered model name (see 'repalign models'), or hf:PATH-OR-REPO; one per --model, "
                        "repeat it for more: --model antiberty --model iglm")
    e.add_argument("-o", "--output", required=True, help="cache file (HDF5), created or appended to")
    e.add_argument("--layers", action=SeveralValues, positional="input file", help="layer names or patterns ('esmc.*'), or 'all'")
    e.add_argument("--pool", choices=("mean", "cls", "last", "max", "none"),
                   help="per-sample pooling over residues/atoms, special tokens and padding excluded: mean, max, "
                        "last (last residue), cls (the model's CLS/BOS vector), none (token features only); "
                        "default: the model's")
    e.add_argument("--tokens", action=SeveralValues, positional="input file", help="layers whose per-residue/atom features are stored too")
    e.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    e.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="compute dtype")
    e.add_argument("--store-dtype", default="float32", choices=("float32", "float16"), help="storage dtype")
    e.add_argument("--compression", choices=("gzip", "lzf", "none"), help=COMPRESSION_HELP)
    e.add_argument("--batch-tokens", type=int, default=4096, help="token/atom budget per batch (default 4096)")
    e.add_argument("--limit", type=int, help="only the first N inputs")
    e.add_argument("--weights", help="local weights directory or file (one model)")
    e.add_argument("--option", action=SeveralValues, positional="input file", metavar="[MODEL:]KEY=VALUE",
                   help="model option: KEY=VALUE goes to every model that takes KEY, MODEL:KEY=VALUE to MODEL only")
    e.add_argument("--loops", help="ESMFold2 trunk loops to keep: last, all or 0,5,20")
    e.add_argument("--overwrite", action="store_true", help="replace a model stored with other options")
    e.add_argument("--skip-invalid", action="store_true", help="skip invalid samples with a warning instead of failing")
    e.add_argument("--cluster", help="run on Dask: local:N, tcp://HOST:PORT or slurm:CONFIG.yaml (docs/scaling.md)")
    e.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")
    progress_flag(e)
    e.add_argument("--dry-run", action="store_true",
                   help="print the plan (cached samples, batches, memory and disk estimates) without loading weights")
    e.set_defaults(func=cmd_extract)

    c = sub.add_parser("compare", help="compare two models layer by layer")
    c.add_argument("cache", help="cache file holding model A (and B unless --cache-b)")
    c.add_argument("--a", required=True, help="model A")
    c.add_argument("--b", required=True, help="model B")
    c.add_argument("--cache-b", help="cache file holding model B")
    c.add_argument("--metric", action=SeveralValues, positional="cache file", help="metric name(s), e.g. mknn cka cknna (default mknn)")
    c.add_argument("--k", default="10",
                   help="neighbours for kNN metrics and CKNNA (default 10); several, comma separated (5,10,25), "
                        "score every k")
    c.add_argument("--n-samples", metavar="N,N,...",
                   help="also score on random subsets of these sizes (comma separated, e.g. 250,500,1000; drawn "
                        "with --seed), beside all shared samples; the table gains k, subset and chance_level columns")
    c.add_argument("--repeats", type=int, help="with --n-samples: subsets drawn per size (default 5)")
    c.add_argument("--kernel", choices=("linear", "rbf"), help="CKA kernel (default linear)")
    c.add_argument("--sigma", type=float, help="rbf bandwidth (default: median pairwise distance)")
    c.add_argument("--dim", type=int, help="svcca_platonic: singular directions kept (default 10)")
    c.add_argument("--variance", type=float, help="svcca: share of variance the kept directions explain (default 0.99)")
    c.add_argument("--whitening", type=float,
                   help="shape_similarity: partial whitening in [0, 1] (0: rotations only, Procrustes; 1: CCA; default 0)")
    c.add_argument("--rdm", choices=("correlation", "euclidean", "cosine"), help="rsa: dissimilarity of two samples (default correlation)")
    c.add_argument("--rdm-compare", choices=("pearson", "spearman", "cosine", "rho_a", "tau_a"),
                   help="rsa: comparison of the two RDMs (default spearman)")
    c.add_argument("--normalize", default="l2", choices=("l2", "center", "none"), help="row preprocessing (default l2)")
    c.add_argument("--layers-a", action=SeveralValues, positional="cache file", help="layers of A (names or patterns)")
    c.add_argument("--layers-b", action=SeveralValues, positional="cache file", help="layers of B (names or patterns)")
    c.add_argument("--permutations", type=int, default=0,
                   help="permutations for p-values and calibrated scores (e.g. 200; default 0: none)")
    c.add_argument("--ci", type=float, help="confidence level of subsampling intervals, e.g. 0.95")
    c.add_argument("--subsamples", type=int, default=100, help="subsamples for --ci (default 100)")
    c.add_argument("--fraction", type=float, default=0.8, help="share of the samples in each subsample for --ci (default 0.8)")
    c.add_argument("--seed", type=int, default=0, help="seed of permutations and subsamples (default 0)")
    c.add_argument("--layer-family", choices=("hidden", "all"),
                   help="layer pairs the best pair and the layer-search adjustment range over: hidden (default) "
                        "leaves out each network's input layer; all keeps it (a layer with itself is always left out)")
    c.add_argument("--controls", metavar="SEEDS",
                   help="also compare the random-init controls NAME@random:SEED of these seeds (0-19, 0,3,5 or 0-4,9; "
                        "already extracted) with the same settings, and test the trained best pair against each "
                        "seed's best pair (rank test); the table gains level, control_seed and contrast rows")
    c.add_argument("--cluster", help="spread per-layer work over Dask: local:N, tcp://HOST:PORT or slurm:CONFIG.yaml")
    c.add_argument("--knn", default="exact", choices=("exact", "faiss-hnsw", "faiss-ivf"),
                   help="neighbour search; approximate ones report their recall (default exact)")
    c.add_argument("--block-rows", type=int, help="read layers in row blocks (out of core; kNN metrics, linear CKA)")
    c.add_argument("--engine", choices=("numba", "torch"),
                   help="where Gram blocks, neighbour candidates and CKA statistics are computed: numba on the CPU "
                        "(default) or torch on --device; the same neighbour lists either way")
    c.add_argument("--device", help="with --engine torch: cpu (default), cuda or cuda:N")
    c.add_argument("--search-block", type=int, metavar="ROWS",
                   help="with --cluster: split each layer's exact neighbour search into ROWS x ROWS block tasks over all workers")
    c.add_argument("--anchors", metavar="N|FILE",
                   help="compare relative representations: each sample's cosine similarities to N anchor samples "
                        "drawn with --seed, or to the ids in FILE (one per line); the anchors are left out of the scores")
    c.add_argument("--tokens", action="store_true",
                   help="compare token layers row by row (residues, atoms); permutations and --ci move whole samples")
    c.add_argument("--max-tokens", type=int, help="with --tokens: use at most this many rows, drawn with --seed")
    c.add_argument("--subsample", choices=("samples", "uniform"),
                   help="with --max-tokens: draw whole samples (default) or rows uniformly")
    c.add_argument("--group-by", help="with --tokens: mean-pool the tokens of each group per sample: chain or residue "
                                      "(sequences), element (structures); needs --inputs")
    c.add_argument("--inputs", action=SeveralValues, positional="cache file", paths=CACHE_SUFFIXES,
                   help="with --tokens: the input files the models were extracted from "
                                               "(checks one row per residue/atom; labels for --group-by)")
    c.add_argument("-o", "--output", help="write the tidy table (.csv, .tsv or .parquet; - for CSV on standard output)")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")
    progress_flag(c)
    c.set_defaults(func=cmd_compare)

    cache = sub.add_parser("cache", help="inspect a cache, import and export features, pool again")
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    info = cache_sub.add_parser("info", help="models, layers, shapes, dtypes, sample counts and provenance")
    info.add_argument("cache")
    info.add_argument("--json", action="store_true", help="print one JSON object (keys in docs/cache-format.md)")
    info.set_defaults(func=cmd_cache_info)

    im = cache_sub.add_parser(
        "import", help="store features computed elsewhere (.npy .npz .pt ESM folder .h5 .h5ad .parquet)",
        description="Store features computed elsewhere as a model of a cache. ESM extract.py layers are renumbered "
                    "as repalign names the same model's layers (esm2-*, hf:): repr layer 0 is 'embeddings' and repr "
                    "layer i is 'layer.{i-1}' (ESM's layer 6 becomes layer.5), so an imported layer meets the "
                    "extracted one of the same depth under one name.")
    im.add_argument("file", help="feature file or folder of ESM extract.py .pt files")
    im.add_argument("--model", "-m", required=True, help="name of the model in the cache")
    im.add_argument("--inputs", action=SeveralValues, positional="feature file", paths=FEATURE_SUFFIXES,
                    help="the inputs, in row order (FASTA/CSV/structures): ids and content hashes")
    im.add_argument("--ids", help="file of sample ids, one per line, in row order (no content hashes)")
    im.add_argument("-o", "--output", required=True, help="cache file (HDF5), created or added to")
    im.add_argument("--layers", action=SeveralValues, positional="feature file",
                    help="names of an unnamed array's layers, or the layers (names/patterns) to keep")
    im.add_argument("--pool", default="mean", choices=("mean", "cls", "last", "max"),
                    help="pooling of per-token features (default mean)")
    im.add_argument("--no-tokens", action="store_true", help="do not store per-token features, only pooled ones")
    im.add_argument("--store-dtype", default="float32", choices=("float32", "float16"), help="storage dtype")
    im.add_argument("--compression", choices=("gzip", "lzf", "none"), help=COMPRESSION_HELP)
    im.add_argument("--overwrite", action="store_true", help="replace a model of the same name")
    im.add_argument("--max-member-size", metavar="SIZE",
                    help="read members (arrays, datasets) up to SIZE (e.g. 8G) from a trusted file; default: refuse "
                         "one declaring more than 1 GiB and 100x its size on disk, or half the available memory")
    im.set_defaults(func=cmd_cache_import)

    ex = cache_sub.add_parser("export", help="write one model to .h5ad, .npz, .parquet or a folder of .pt files")
    ex.add_argument("cache")
    ex.add_argument("--model", "-m", required=True, help="model to export")
    ex.add_argument("-o", "--output", required=True, help="OUT.h5ad, OUT.npz, OUT.parquet, or a folder (per-sample .pt)")
    ex.add_argument("--layers", action=SeveralValues, positional="cache file", help="layers to write (names or patterns; default all)")
    ex.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    ex.add_argument("--max-member-size", metavar="SIZE",
                    help="read datasets up to SIZE (e.g. 8G) from a trusted cache; default: refuse one declaring "
                         "more than 1 GiB and 100x its size on disk")
    ex.set_defaults(func=cmd_cache_export)

    rp_ = cache_sub.add_parser("repool", help="pool stored token features another way, without running the model")
    rp_.add_argument("cache")
    rp_.add_argument("--model", "-m", required=True, help="model whose token features are pooled")
    rp_.add_argument("--pool", required=True, choices=("mean", "last", "max"), help="pooling")
    rp_.add_argument("--name", help="name of the new model (default MODEL.POOL)")
    rp_.add_argument("--layers", action=SeveralValues, positional="cache file", help="token layers to pool (default all)")
    rp_.add_argument("--overwrite", action="store_true", help="replace a model of the new name")
    rp_.set_defaults(func=cmd_cache_repool)

    m = sub.add_parser("models", help="list registered models, their modality, layers, weights and licence")
    m.add_argument("--layers", action="store_true", help="also list every model's layer names")
    m.add_argument("--json", action="store_true", help="print a JSON list, one object per model (keys in the README)")
    m.add_argument("--model", "-m", action="append", help="only this model (repeat for more)")
    m.add_argument("--weights", metavar="PATH",
                   help="with one --model: the weights path that 'extract --weights' would load, checked for what the "
                        "model reads from it (here: yes only when all of it is there)")
    m.set_defaults(func=cmd_models)

    d = sub.add_parser("demo", help="run the offline end-to-end study on bundled real models and data")
    d.add_argument("-o", "--output", default="demo-output", help="output folder (default demo-output)")
    d.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")
    progress_flag(d)
    d.set_defaults(func=cmd_demo)

    pl = sub.add_parser("plot", help="draw a publication figure from a tidy score table (see docs/figures.md)")
    pl.add_argument("table", help=".csv/.tsv/.parquet written by 'repalign compare -o' or 'repalign report'; "
                                   "- reads a CSV table from standard input")
    pl.add_argument("-o", "--output", required=True, help="output path stem: STEM.png (300 dpi), STEM.pdf, STEM.svg")
    pl.add_argument("--kind", default="layers", metavar="KIND",  # any kind of repalign.plot.FIGURES, checked when plotting
                    help="layers: layer x layer heatmap; models: model x model matrix; depth: score vs relative "
                         "depth; size: score vs model size; n-curve: score vs samples N per k, from a table of "
                         "'compare --n-samples'; profile: a per-layer measure vs relative depth, from a table "
                         "of 'repalign profile'; controls: trained beside the random-init controls' mean, from a table of "
                         "'compare --controls' (default layers)")
    pl.add_argument("--metric", help="metric to draw (default: the table's first)")
    pl.add_argument("--a", help="layers, n-curve: model A; depth, models: models to draw, comma separated (default: all)")
    pl.add_argument("--granularity", choices=("pooled", "token"),
                    help="rows of this level only, for tables holding pooled and token-level (compare --tokens) rows")
    pl.add_argument("--n-samples", type=int, metavar="N",
                    help="rows scored on N samples only, for tables holding pairs at several N (chance levels)")
    pl.add_argument("--b", help="layers, n-curve: model B; depth/size: the reference model (default: the most compared)")
    pl.add_argument("--layer-b", help="depth/size: score against this layer of B instead of B's best layer")
    pl.add_argument("--layer", action=SeveralValues, positional="table file", metavar="MODEL=LAYER",
                    help="models, n-curve: use this layer of MODEL instead of the best layer pair; repeatable")
    pl.add_argument("--order", help="models: 'cluster' (default), 'table', or a comma-separated model order")
    pl.add_argument("--size", action=SeveralValues, positional="table file", metavar="MODEL=NUMBER",
                    help="size: the size of MODEL (default: parsed from names like esmc-300m)")
    pl.add_argument("--calibrated", action="store_true", help="layers/models/n-curve: draw calibrated scores (needs permutations)")
    pl.add_argument("--alpha", type=float, default=0.05, help="significance level for hatching (default 0.05)")
    pl.add_argument("--width", default="single",
                    help="figure width: a journal preset (single 3.3 in, onehalf 120 mm, double 6.85 in, science-1/-2/-3: "
                         "5.7/12.1/18.4 cm) or a length: points (246), 85mm, 8.5cm, 3.3in (default single)")
    pl.add_argument("--scale", default="fixed", choices=("fixed", "data"),
                    help="colours/values: the metric's fixed 0-1 range (default) or this figure's data range")
    pl.add_argument("--format", default="png,pdf,svg", help="comma-separated formats: png, pdf, svg (default all)")
    pl.set_defaults(func=cmd_plot)

    pf = sub.add_parser("profile", help="a per-layer measure of one model (intrinsic dimension) as a tidy table")
    pf.add_argument("cache", help="cache file (HDF5)")
    pf.add_argument("--model", required=True, help="model whose pooled layers are measured")
    pf.add_argument("--measure", default="intrinsic_dimension", choices=("intrinsic_dimension",),
                    help="intrinsic_dimension: TwoNN (Facco et al. 2017) or Levina-Bickel MLE (default)")
    pf.add_argument("--method", choices=("twonn", "mle"), help="intrinsic_dimension: estimator (default twonn)")
    pf.add_argument("--fraction", type=float, help="twonn: share of the smallest r2/r1 ratios fitted (default 0.9)")
    pf.add_argument("--k", type=int, help="mle: neighbours per sample (default 20)")
    pf.add_argument("--layers", action=SeveralValues, positional="cache file", help="layers to measure (default: every pooled layer)")
    pf.add_argument("--normalize", default="none", choices=("none", "l2", "center"),
                    help="row preprocessing before measuring (default none: the features as stored)")
    pf.add_argument("-o", "--output", required=True, help="table: .csv, .tsv or .parquet; - writes CSV to standard output")
    pf.set_defaults(func=cmd_profile)

    rp = sub.add_parser("report", help="write a self-contained HTML report of a score table, or of every model pair of a cache")
    rp.add_argument("source", metavar="TABLE|CACHE|-",
                    help=".csv/.tsv/.parquet table written by 'repalign compare -o' (rendered with the settings written "
                         "beside it), - for a CSV table on standard input, or a cache (HDF5): every model pair compared "
                         "first, with the demo's settings")
    rp.add_argument("-o", "--output", required=True,
                    help="report folder (index.html, scores.csv): new, empty or an earlier report, whose own files are replaced")
    rp.add_argument("--force", action="store_true",
                    help="write into a folder that holds other files (they are never replaced or removed)")
    rp.add_argument("--metric", action=SeveralValues, positional="cache file",
                    help="a cache's metric name(s) (default: mknn unbiased_cka)")
    rp.add_argument("--k", type=int, help="a cache's neighbours for kNN metrics (default: min(10, N // 10) for N shared samples)")
    rp.add_argument("--permutations", type=int,
                    help="a cache's permutations for p-values adjusted for the layer search (default 99)")
    rp.add_argument("--seed", type=int, help="a cache's seed of the permutations (default 0)")
    rp.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")
    progress_flag(rp)
    rp.set_defaults(func=cmd_report)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ArgumentTrap as exc:
        print(f"repalign: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.INFO if not quiet else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from repalign.progress import bars_beside_logs, progress_setting  # lazy: CLI start-up

    with progress_setting(False if quiet else args.progress), one_line_warnings(args.command), bars_beside_logs():
        return run_command(args)


@contextlib.contextmanager
def one_line_warnings(command: str):
    """Repalign's warnings (:class:`repalign.errors.RepalignWarning`) inside the block go to standard
    error once each, as ``repalign: warning: ...`` in the command's words; other warnings as Python shows them."""
    shown: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("always", RepalignWarning)  # each text once, below, not once per code line
        python_show = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, RepalignWarning):
                return python_show(message, category, filename, lineno, file, line)
            text = cli_message(message, command)
            text = compare_wording(text) if command == "compare" else text
            if text not in shown:
                shown.add(text)
                print(f"repalign: warning: {text}", file=sys.stderr, flush=True)

        warnings.showwarning = show
        yield


def run_command(args) -> int:
    """Run the subcommand of ``args``: user errors as one line and exit status 1, Ctrl-C as status 130."""
    try:
        return args.func(args)
    except RepalignError as exc:
        if args.debug:
            raise
        print(f"repalign: error: {cli_message(exc, args.command)}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # the reader of our output went away (`repalign cache info X | head -1`): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 0
    except KeyboardInterrupt:
        message = "interrupted"
        if args.command == "extract":
            message += ("; completed batches are kept (a model being overwritten keeps its old data): "
                        "rerun the same command to resume")
        elif getattr(args, "cache_command", None) == "import":
            message += "; the cache's models are as they were: rerun the same command to complete the import"
        print(f"repalign: {message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, MemoryError) as exc:
        if args.debug:
            raise
        print(f"repalign: error: {system_error_text(exc)} (rerun with --debug for details)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

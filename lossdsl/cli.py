"""The ``lossdsl`` command. Exit status: 0 clean, 1 errors in specs, 2 usage errors."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .ast import Span, Spec
from .driver import DRIVER, plan_for, read_spec
from .formatting import format_source
from .errors import Diagnostic, LossSpecError
from .files import DEFAULT_MAX_BYTES
from .plan import Plan
from .reference import terms_markdown, terms_text

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lossdsl", description="Check and inspect lossdsl loss specs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="check .loss files and report every problem")
    check.add_argument("paths", nargs="+", metavar="PATH", help="files, or directories searched for *.loss")
    check.add_argument("--format", choices=("text", "json", "github"), default="text", help="output format")
    check.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", type=_param,
                       help="override a param (repeatable); checked against each spec's params and ranges")
    _reading_options(check)
    check.set_defaults(run=_check)

    fmt = commands.add_parser("fmt", help="format .loss files canonically, keeping comments")
    fmt.add_argument("paths", nargs="+", metavar="PATH", help="files, or directories searched for *.loss")
    fmt.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    fmt.add_argument("--diff", action="store_true", help="write nothing; print the changes as a unified diff")
    _reading_options(fmt, includes=False)
    fmt.set_defaults(run=_fmt)

    explain = commands.add_parser("explain", help="show a spec's typed tree, terms, inputs and compiled module")
    explain.add_argument("spec", metavar="SPEC", help="a .loss file")
    explain.add_argument("--no-trace", action="store_true", help="skip tracing the forward with torch.fx")
    _reading_options(explain)
    explain.set_defaults(run=_explain)

    verify = commands.add_parser("verify", help="gradient and stability checks on synthetic inputs")
    verify.add_argument("spec", metavar="SPEC", help="a .loss file with an inputs: block")
    verify.add_argument("--steps", type=_positive_int, default=300, help="optimisation steps (default 300)")
    _reading_options(verify)
    verify.set_defaults(run=_verify)

    schema = commands.add_parser("schema", help="print the JSON Schema of the AST (Spec.model_dump_json)")
    schema.set_defaults(run=_schema)

    terms = commands.add_parser("terms", help="list the terms and their parameters")
    terms.add_argument("--markdown", action="store_true", help="print the reference as docs/terms.md holds it")
    terms.set_defaults(run=_terms)

    advise = commands.add_parser("advise", help="suggest a spec from the data, each choice with its reason")
    advise.add_argument("data", metavar="DATA", help="a .csv, .tsv, .parquet, .npy or .npz file")
    advise.add_argument("--target", action="append", default=[], metavar="COL",
                        help="the target column (repeat, or COL1,COL2, for several 0/1 columns: multi-label); "
                             "optional when the file holds one array")
    advise.add_argument("--task", choices=("binary", "multiclass", "multilabel", "regression", "segmentation"),
                        help="the task, instead of inferring it")
    advise.add_argument("--group", action="append", default=[], metavar="COL",
                        help="a protected-group column: adds a fairness bound (repeatable)")
    advise.add_argument("--weight", metavar="COL", help="a column of per-row sample weights")
    advise.add_argument("--metric", metavar="METRIC",
                        help="the metric that matters: accuracy, f1, fBETA, recall, precision, roc_auc, log_loss, "
                             "mae, rmse, pinball@Q, dice, ...")
    advise.add_argument("--features", metavar="COL,...",
                        help="the feature columns, for the duplicate-label check (default: every other column)")
    advise.add_argument("--format", choices=("text", "json"), default="text",
                        help="text: the spec; json: the statistics, reasons and spec")
    advise.add_argument("-o", "--output", metavar="FILE", help="write there instead of to stdout")
    advise.set_defaults(run=_advise)

    compare = commands.add_parser("compare", help="train candidate specs on your data and score them by a metric")
    compare.add_argument("specs", nargs="+", metavar="SPEC", help=".loss files, or spec text such as 'ce()'")
    compare.add_argument("--data", required=True, metavar="DATA", help="a .csv file (.parquet, .npz where installed)")
    compare.add_argument("--target", action="append", required=True, metavar="COL",
                         help="the column to predict (repeat, or COL1,COL2, for several 0/1 columns: multi-label)")
    compare.add_argument("--task", choices=("binary", "multiclass", "multilabel", "regression"), default=None,
                         help="default: inferred from the target")
    compare.add_argument("--model", default="linear", metavar="linear|mlp|python:MODULE:FACTORY",
                         help="linear (default), mlp (one hidden layer of 64), or your factory f(n_features, n_outputs)")
    compare.add_argument("--metric", default=None, metavar="NAME",
                         help="the metric that decides: accuracy, f1, recall, balanced_accuracy, macro_f1, "
                              "recall[CLASS], dp_gap, eo_gap; mae, rmse, pinball@Q; multi-label: f1 (macro), "
                              "micro_f1, samples_f1, subset_accuracy, hamming_loss, f1[LABEL], recall[LABEL]")
    compare.add_argument("--folds", type=_positive_int, default=3, metavar="K", help="cross-validation folds (default 3)")
    compare.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                         help="one held-out fraction instead of folds")
    compare.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the folds, weights and batches")
    compare.add_argument("--group", action="append", default=[], metavar="COL",
                         help="a group column (repeatable): the specs' group input, fairness gaps reported; not a feature")
    compare.add_argument("--epochs", type=_positive_int, default=None, metavar="N",
                         help="default: enough for 1,000 optimiser steps, at least 5")
    compare.add_argument("--plot", default=None, metavar="FILE.png", help="a bar chart of the named metric")
    compare.add_argument("--format", choices=("text", "json", "markdown"), default="text", help="output format")
    compare.add_argument("--quiet", action="store_true", help="no progress bar")
    compare.set_defaults(run=_compare)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # e.g. piped into head
        return EXIT_OK


def _reading_options(command: argparse.ArgumentParser, includes: bool = True) -> None:
    """--max-bytes, and --include-root for the commands that follow includes."""
    command.add_argument("--max-bytes", type=_byte_count, default=DEFAULT_MAX_BYTES, metavar="N",
                         help=f"read spec files of at most N bytes (default {DEFAULT_MAX_BYTES:,})")
    if includes:
        command.add_argument("--include-root", metavar="DIR", default=None, type=_directory,
                             help="the folder includes may read from (default: each spec's own folder)")


def _directory(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"not a directory: {text!r}")
    return text


def _byte_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of bytes, got {text!r}")
    return value


def _spec_files(command: str, raw_paths: Sequence[str]) -> list[Path] | None:
    """The .loss files named or found under the directories; None (after a message) if one is missing
    or a directory holds none."""
    files: list[Path] = []
    for raw in raw_paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.loss") if p.is_file())
            if not found:  # a mistyped or wrong directory: checking nothing must not pass as clean
                print(f"lossdsl {command}: no .loss files in directory: {raw}", file=sys.stderr)
                return None
            files += found
        elif path.exists():
            files.append(path)
        else:
            print(f"lossdsl {command}: no such file or directory: {raw}", file=sys.stderr)
            return None
    return files


def _check(args: argparse.Namespace) -> int:
    files = _spec_files("check", args.paths)
    if files is None:
        return EXIT_USAGE
    diagnostics: list[Diagnostic] = []
    failed_files = 0
    for file in files:
        found = _check_file(file, dict(args.param), args.include_root, args.max_bytes)
        diagnostics += found
        failed_files += any(d.severity == "error" for d in found)
    errors = sum(d.severity == "error" for d in diagnostics)
    warnings = len(diagnostics) - errors
    if args.format == "json":
        report = {"files_checked": len(files), "errors": errors, "warnings": warnings,
                  "diagnostics": [d.to_json() for d in diagnostics]}
        print(json.dumps(report, indent=2))
    elif args.format == "github":
        for diagnostic in diagnostics:
            print(diagnostic.to_github())
        print(_summary(errors, warnings, failed_files, len(files)), file=sys.stderr)
    else:
        color = _use_color(sys.stdout)
        for diagnostic in diagnostics:
            print(diagnostic.render(color))
        print(_summary(errors, warnings, failed_files, len(files)))
    return EXIT_ERRORS if errors else EXIT_OK


def _check_file(path: Path, params: dict[str, float], include_root: str | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES) -> list[Diagnostic]:
    try:  # through bind: every static problem, no torch module built
        checked = DRIVER.check_file(path, params, include_root=include_root, max_bytes=max_bytes)
    except LossSpecError as exc:
        return [_in_file(d, path) for d in exc.diagnostics]
    plan = checked if isinstance(checked, Plan) else checked.plan
    return list(plan.warnings)


def _in_file(diagnostic: Diagnostic, path: Path) -> Diagnostic:
    """A diagnostic without a place (an unknown --param) still names the file."""
    if diagnostic.span is not None:
        return diagnostic
    return dataclasses.replace(diagnostic, span=Span(line=1, column=1, end_line=1, end_column=1, filename=str(path)))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _param(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER, got {text!r}") from None


def _summary(errors: int, warnings: int, failed_files: int, checked: int) -> str:
    files = f"{checked} file{'s' * (checked != 1)} checked"
    parts = []
    if errors:
        parts.append(f"{errors} error{'s' * (errors != 1)} in {failed_files} file{'s' * (failed_files != 1)}")
    if warnings:
        parts.append(f"{warnings} warning{'s' * (warnings != 1)}")
    if not parts:
        return f"no problems ({files})"
    return f"{', '.join(parts)} ({files})"


def _fmt(args: argparse.Namespace) -> int:
    files = _spec_files("fmt", args.paths)
    if files is None:
        return EXIT_USAGE
    color = _use_color(sys.stdout)
    changed = failed = 0
    for file in files:
        try:
            text = read_spec(file, args.max_bytes)
            formatted = format_source(text, str(file))
        except LossSpecError as exc:
            print(exc.render(color))
            failed += 1
            continue
        if formatted == text:
            continue
        changed += 1
        if args.diff:
            sys.stdout.writelines(
                difflib.unified_diff(text.splitlines(True), formatted.splitlines(True), str(file), str(file))
            )
        elif args.check:
            print(f"would reformat {file}")
        else:
            file.write_text(formatted, encoding="utf-8")
            print(f"reformatted {file}")
    verb = "would be reformatted" if args.check or args.diff else "reformatted"
    print(f"{changed} file{'s' * (changed != 1)} {verb}, {len(files) - changed - failed} unchanged"
          + (f", {failed} with errors" if failed else ""), file=sys.stderr)
    if failed or (changed and (args.check or args.diff)):
        return EXIT_ERRORS
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    from .explain import explain

    try:
        plan = plan_for(read_spec(args.spec, args.max_bytes), args.spec, include_root=args.include_root,
                        max_bytes=args.max_bytes)
        if plan.objective is None:
            raise LossSpecError([Diagnostic("E103", "the spec has no objective", plan.spec.span)])
        report = explain(plan, trace=not args.no_trace)
    except LossSpecError as exc:
        print(exc.render(_use_color(sys.stdout)))
        return EXIT_ERRORS
    sys.stdout.write(report)
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from .verify import render, verify

    try:
        plan = plan_for(read_spec(args.spec, args.max_bytes), args.spec, include_root=args.include_root,
                        max_bytes=args.max_bytes)
        checks = verify(plan, steps=args.steps)
    except LossSpecError as exc:
        print(exc.render(_use_color(sys.stdout)))
        return EXIT_ERRORS
    sys.stdout.write(render(checks))
    return EXIT_OK if all(c.passed for c in checks) else EXIT_ERRORS


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(Spec.model_json_schema(), indent=2))
    return EXIT_OK


def _terms(args: argparse.Namespace) -> int:
    sys.stdout.write(terms_markdown() if args.markdown else terms_text())
    return EXIT_OK


def _advise(args: argparse.Namespace) -> int:
    from .advise import advise
    from .datafiles import DataError, read_table, select_columns

    targets, group_names = _column_names(args.target), _column_names(args.group)
    try:
        table = read_table(args.data)
        if not targets:
            if len(table) != 1:
                raise DataError(f"{args.data}: name the target column with --target "
                                f"(columns: {', '.join(list(table)[:20])})")
            targets = list(table)
        chosen = _column_names([args.features]) if args.features else None
        named = [*targets, *group_names, *([args.weight] if args.weight else []), *(chosen or [])]
        select_columns(table, named, args.data)  # a missing column: one line naming the file and the columns
        rows = table[targets[0]].shape[0]
        excluded = {*targets, *([args.weight] if args.weight else [])}
        feature_names = chosen if chosen is not None else [
            name for name in table if name not in excluded and table[name].ndim == 1 and table[name].shape[0] == rows]
        advice = advise(
            target={name: table[name] for name in targets},
            features={name: table[name] for name in feature_names} if feature_names else None,
            task=args.task,
            groups={name: table[name] for name in group_names} or None,
            metric=args.metric,
            weight={args.weight: table[args.weight]} if args.weight else None,
        )
    except DataError as exc:
        print(f"lossdsl advise: {exc}", file=sys.stderr)
        return EXIT_USAGE
    text = json.dumps(advice.to_json(), indent=2) + "\n" if args.format == "json" else advice.spec
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"lossdsl advise: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        sys.stdout.write(text)
    for warning in advice.warnings:
        print(f"lossdsl advise: warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    """Exit 2 for every user mistake (the data, an option, a spec that does not fit the data), one
    line on stderr, or the spec's diagnostic; no traceback."""
    from .compare import DataError, compare, load_factory, read_table

    targets = _column_names(args.target)  # several (repeated, or COL1,COL2): multi-label, as advise reads them
    if not targets:
        print("lossdsl compare: --target: no column named", file=sys.stderr)
        return EXIT_USAGE
    target = targets[0] if len(targets) == 1 else targets
    try:
        table = read_table(args.data)
        model = load_factory(args.model) if args.model not in ("linear", "mlp") else args.model
        inputs = _compare_inputs(args.specs, table, targets, args.group)
        result = compare(args.specs, table, target, task=args.task, model=model, metric=args.metric,
                         folds=args.folds, holdout=args.holdout, seed=args.seed, groups=args.group or None,
                         inputs=inputs, epochs=args.epochs, progress=not args.quiet)
    except DataError as exc:
        print(f"lossdsl compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LossSpecError as exc:
        print(exc.render(_use_color(sys.stderr)), file=sys.stderr)
        return EXIT_USAGE
    if args.format == "json":
        print(result.to_json())
    else:
        sys.stdout.write(result.table(markdown=args.format == "markdown"))
    if args.plot:
        try:
            print(f"plot: {result.plot(args.plot, [result.metric])}", file=sys.stderr)
        except ImportError:
            print("lossdsl compare: --plot needs matplotlib: pip install matplotlib", file=sys.stderr)
            return EXIT_USAGE
        except OSError as exc:
            print(f"lossdsl compare: cannot write the plot {args.plot}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    return EXIT_OK


def _column_names(values: Sequence[str]) -> list[str]:
    """Repeated options and comma-separated lists, as one list of column names."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _compare_inputs(specs: Sequence[str], table: dict, targets: Sequence[str],
                    groups: Sequence[str]) -> dict[str, str]:
    """The columns the specs read besides pred, target and the groups (a sample_weight=w): inputs, not features."""
    from .compare import _compiled, _load

    names: dict[str, str] = {}
    for spec in specs:
        for name in _compiled(_load(spec)).inputs:
            if name not in ("pred", "target", *groups, *targets) and name in table:
                names[name] = name
    return names


def _use_color(stream: object) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

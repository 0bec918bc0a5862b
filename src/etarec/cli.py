"""`etarec` command line: parses arguments, calls the Python API, prints. Errors are one line on stderr."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from etarec.allocator import configure_step_process
from etarec.errors import EtarecError


def _prepare(args) -> None:
    from etarec.config import DataConfig, build_config, load_config
    from etarec.data.prepare import prepare

    config = load_config(args.config) if args.config else build_config()
    data: DataConfig = config.data
    if args.dataset:
        data = data.model_copy(update={"dataset": args.dataset, "path": None, "prepared_dir": None})
    if args.path:
        data = data.model_copy(update={"path": args.path})
    data = DataConfig.model_validate(data.model_dump())
    if args.stream:
        from etarec.data.taobao_stream import prepare_taobao_stream

        prepare_taobao_stream(data, Path(args.out) if args.out else None)
        return
    _print_bayes(prepare(data, Path(args.out) if args.out else None))


def _print_bayes(folder: Path) -> None:
    """A generated dataset's ceiling (synth-long's Bayes-optimal AUC per split), after its summary line."""
    from etarec.data.synth import bayes_line

    line = bayes_line(json.loads((Path(folder) / "meta.json").read_text()))
    if line:
        print(line)


SYNTH_KNOBS = ("users", "interests", "long_len", "relevant_back", "catalog", "topics", "category_agreement",
               "samples_per_user")


def _synth(args) -> None:
    from etarec.config import build_config
    from etarec.data.prepare import prepare
    from etarec.data.synth import NAME

    knobs = {key: getattr(args, key) for key in SYNTH_KNOBS if getattr(args, key) is not None}
    data = {"dataset": NAME, "prepared_dir": args.out, "synth": knobs, **({"seed": args.seed} if args.seed is not None else {})}
    config = build_config({"data": data})  # one line for a bad knob
    _print_bayes(prepare(config.data, Path(args.out)))
    sets = " ".join(f"--set data.{key}={value}" for key, value in
                    [("dataset", NAME), ("prepared_dir", args.out), *[(f"synth.{k}", v) for k, v in knobs.items()],
                     *([("seed", args.seed)] if args.seed is not None else [])])
    print(f"train on it (the same data section, else it is generated again): etarec train --config ... {sets}")


def _train(args) -> None:
    from etarec.config import load_config
    from etarec.train.trainer import resume, train

    if args.resume:
        if args.config or args.set or args.out or args.overwrite:
            raise EtarecError("--resume DIR continues the run with the config saved in DIR; "
                              "drop --config/--set/--out/--overwrite, or start a new run without --resume")
        resume(args.resume, progress=not args.no_progress)
        return
    if not (args.config and args.out):
        raise EtarecError("train needs --config and --out (or --resume DIR to continue a run)")
    config = load_config(args.config, args.set)
    _check_run_folder(Path(args.out), args.overwrite)
    _check_data(config)
    train(config, args.out, progress=not args.no_progress)


def _check_run_folder(out: Path, overwrite: bool) -> None:
    """`train --out`: a folder (new, or one to train into); a finished or resumable run only with --overwrite."""
    from etarec.data.files import folder_problem

    problem = folder_problem(out)
    if problem:
        raise EtarecError(f"--out {problem}; pass a folder for the run (a new one, or an existing folder)")
    if overwrite:
        return
    if (out / "metrics.json").is_file():
        raise EtarecError(f"--out {out} holds a finished run (metrics.json); pass --overwrite to train it again "
                          "from scratch, or choose a new folder")
    if (out / "state.pt").is_file():
        raise EtarecError(f"--out {out} holds an unfinished run (state.pt); continue it with --resume {out}, "
                          "or pass --overwrite to start it again from scratch")


def _check_data(config) -> None:
    """An unknown dataset fails here, before the run folder is made; +time without real times warns."""
    import os

    from etarec.data.datasets import get_dataset
    from etarec.data.files import print_warning

    dataset = get_dataset(config.data.dataset)
    missing = dataset.missing_times(config.data)
    if config.model.use_time and missing and os.environ.get("RANK", "0") == "0":
        print_warning(f"model.use_time is on but dataset '{dataset.name}' has no timestamps ({missing}): every time "
                      "gap is 0, so +time carries nothing; map a timestamp column or set model.use_time=false")


def _evaluate(args) -> None:
    from etarec.data.batch import BatchBuilder
    from etarec.data.prepare import ensure_prepared
    from etarec.store.checkpoint import load_checkpoint
    from etarec.train.metrics import length_edges
    from etarec.train.trainer import evaluate_split

    edges = length_edges(args.length_buckets)
    model, config, _ = load_checkpoint(Path(args.checkpoint))  # checks it against the run's config.yaml
    data = ensure_prepared(config.data)
    builder = BatchBuilder(data, config.model.long_len, config.model.short_len, model.inputs)
    metrics = evaluate_split(model, builder, data.splits[args.split], config.train.eval_batch_size,
                             progress=not args.no_progress, description=args.split, length_edges=edges)
    print(json.dumps({"model": config.model.name, "split": args.split, **metrics}, indent=2))


def _report(args) -> None:
    from etarec.report import report_table

    print(report_table([Path(run) for run in args.runs]))


def _compare(args) -> None:
    from etarec.compare import run_suite

    for path in run_suite(args.suite, args.out, seeds=args.seeds, sweeps=args.sweep, overrides=args.set,
                          progress=not args.no_progress, summary_only=args.summary_only,
                          length_buckets=args.length_buckets,
                          models=args.models.split(",") if args.models else None):
        print(f"wrote {path}")


def _serve(args) -> None:
    from etarec.serve.scorer import Scorer

    try:
        from etarec.serve.service import Limits, Workers, available_cores, check_port, create_app, serve
    except ImportError as error:
        raise EtarecError(f"etarec serve needs {error.name}; install it with: pip install 'etarec[serve]'") from None
    limits = Limits(args.max_candidates, args.max_history, args.queue)
    count = available_cores() if args.workers is None else args.workers
    if count < 0:
        raise EtarecError(f"--workers {count}: give a number of scoring processes, or 0 to score in the service process")
    check_port(args.host, args.port)
    # a bad checkpoint fails here, in one line, before the port opens
    if count == 0:
        app = create_app(Scorer.load(args.checkpoint, args.threads), limits)
        how = "scoring in this process, one request at a time"
    else:
        app = create_app(None, limits, Workers(Path(args.checkpoint), count, args.threads or 1))
        how = f"{count} scoring worker(s), queue {limits.queue}"
    print(f"etarec serve: {app.state.version} on http://{args.host}:{args.port} ({how})")
    serve(app, args.host, args.port)


def _export(args) -> None:
    from etarec.data.files import folder_problem

    target = Path(args.out)
    if target.is_dir():
        raise EtarecError(f"--out {target} is a folder; pass the .onnx file to write, e.g. --out {target / 'model.onnx'}")
    problem = folder_problem(target.parent)
    if problem:
        raise EtarecError(f"cannot write --out {target}: {problem}; choose a path inside a folder")
    from etarec.serve.export import check_onnx, export_onnx

    out = export_onnx(args.checkpoint, args.out)
    report = {"out": str(out), "bytes": out.stat().st_size}
    if args.check:
        report["check"] = check_onnx(args.checkpoint, out)
    print(json.dumps(report, indent=2))


def build_parser() -> argparse.ArgumentParser:
    from etarec.data.datasets import dataset_names

    parser = argparse.ArgumentParser(prog="etarec", description="CTR prediction with long behaviour sequences (ETA and baselines)")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="raw events -> the canonical Parquet dataset")
    prepare.add_argument("--dataset", choices=dataset_names())
    prepare.add_argument("--path", help="raw data folder or file (default: bundled data or ../shared/data)")
    prepare.add_argument("--config", help="take the data section from this YAML config")
    prepare.add_argument("--out", help="output folder (default: prepared/<dataset>): new, empty, or a prepared "
                         "dataset to replace; any other existing path is refused, never deleted")
    prepare.add_argument("--stream", action="store_true",
                         help="Taobao only: stream the CSVs with bounded memory (any size; malformed lines are counted and dropped)")
    prepare.set_defaults(run=_prepare)

    synth = commands.add_parser("synth", help="generate the long-interest benchmark (dataset synth-long) with a "
                                "known answer: its Bayes-optimal AUC is in meta.json")
    synth.add_argument("--out", required=True, help="output folder (as prepare --out)")
    synth.add_argument("--users", type=int, help="users (default 8000; 80/10/10 train/valid/test)")
    synth.add_argument("--interests", type=int, help="long-lived interests per user: 1 current, the rest dormant (default 4)")
    synth.add_argument("--long-len", dest="long_len", type=int,
                       help="behaviours before a user's first sample, x U[0.75, 1.25] (default 1024)")
    synth.add_argument("--relevant-back", dest="relevant_back", type=int,
                       help="how far back (behaviours) the dormant interests were last active (default 512)")
    synth.add_argument("--catalog", type=int, help="items (default 10000)")
    synth.add_argument("--topics", type=int, help="latent topics = categories (default 100)")
    synth.add_argument("--category-agreement", dest="category_agreement", type=float,
                       help="share of items whose category is their latent topic (default 0.7)")
    synth.add_argument("--samples-per-user", dest="samples_per_user", type=int, help="default 40")
    synth.add_argument("--seed", type=int, help="generator seed (data.seed, default 2024)")
    synth.set_defaults(run=_synth)

    train = commands.add_parser("train", help="train a model from a YAML config")
    train.add_argument("--config")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. model.top_k=32")
    train.add_argument("--out", help="run folder: config.yaml, model.pt, state.pt, metrics.json")
    train.add_argument("--overwrite", action="store_true",
                       help="train into --out even when it holds a finished (or unfinished) run, replacing it")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its state.pt (after a crash or kill)")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a trained run on a split")
    evaluate.add_argument("--checkpoint", required=True, help="a run folder written by `etarec train`")
    evaluate.add_argument("--split", default="test", choices=["train", "valid", "test"])
    evaluate.add_argument("--length-buckets", default="50,200,1000", metavar="E1,E2,...",
                          help="edges of the real-history-length buckets of by_length (default 50,200,1000: "
                          "< 50, 50-200, 200-1000, >= 1000)")
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.set_defaults(run=_evaluate)

    report = commands.add_parser("report", help="table of test metrics of finished runs")
    report.add_argument("runs", nargs="+", help="run folders holding metrics.json")
    report.set_defaults(run=_report)

    serve = commands.add_parser("serve", help="HTTP scoring service of a trained run (POST /score)")
    serve.add_argument("--checkpoint", required=True, help="a run folder written by `etarec train`")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-candidates", type=int, default=4096, help="larger requests get 413")
    serve.add_argument("--max-history", type=int, default=100_000, help="larger requests get 413")
    serve.add_argument("--workers", type=int, help="scoring processes, each one request at a time (default: one per "
                       "core; 0: score in the service process itself, one request at a time)")
    serve.add_argument("--queue", type=int, default=32,
                       help="requests that may wait for a free worker; more get 503 with Retry-After")
    serve.add_argument("--threads", type=int, help="torch threads per scoring worker (default 1; with --workers 0: "
                       "torch's, all cores)")
    serve.set_defaults(run=_serve)

    export = commands.add_parser("export", help="export a trained run as an ONNX graph")
    export.add_argument("--checkpoint", required=True, help="a run folder written by `etarec train`")
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("--out", required=True, help="the .onnx file to write")
    export.add_argument("--check", action="store_true", help="then check parity with PyTorch on real test samples")
    export.set_defaults(run=_export)

    compare = commands.add_parser("compare", help="train every model of a suite for several seeds; tables and plots")
    compare.add_argument("--suite", required=True, help="suite YAML, e.g. configs/suites/quickstart.yaml")
    compare.add_argument("--seeds", type=int, default=1, help="runs per model (seed i: train.seed and model.hash_seed + i)")
    compare.add_argument("--out", required=True, help="results folder: runs/, summary.json/.md, auc_vs_cost.png")
    compare.add_argument("--sweep", action="append", default=[], metavar="[ENTRY.]KEY=V1,V2,...",
                         help="instead of the main table, sweep a model key, e.g. eta.hash_bits=4,8,16 or long_len=64,256")
    compare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value for every entry, e.g. train.max_steps_per_epoch=20")
    compare.add_argument("--summary-only", action="store_true",
                         help="train nothing: write the tables from the runs finished so far, naming the others")
    compare.add_argument("--length-buckets", metavar="E1,E2,...",
                         help="edges of the by-history-length tables (default: the suite's length_buckets, else "
                         "50,200,1000)")
    compare.add_argument("--models", metavar="E1,E2,...",
                         help="only these entries of the suite (its order kept), e.g. din,eta")
    compare.add_argument("--no-progress", action="store_true")
    compare.set_defaults(run=_compare)
    return parser


STEP_COMMANDS = ("train", "evaluate", "serve", "compare")  # the commands that run model steps over and over


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen, even in a log file
    if args.command in STEP_COMMANDS:
        configure_step_process()  # before torch loads
    try:
        args.run(args)
    except EtarecError as error:
        print(f"etarec {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"etarec {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

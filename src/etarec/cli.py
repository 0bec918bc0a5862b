"""`etarec` command line: parses arguments, calls the Python API, prints. Errors are one line on stderr."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    prepare(DataConfig.model_validate(data.model_dump()), Path(args.out) if args.out else None)


def _train(args) -> None:
    from etarec.config import load_config
    from etarec.train.trainer import train

    config = load_config(args.config, args.set)
    train(config, args.out, progress=not args.no_progress)


def _evaluate(args) -> None:
    import yaml

    from etarec.data.batch import BatchBuilder
    from etarec.data.prepare import ensure_prepared
    from etarec.train.checkpoint import load_checkpoint
    from etarec.train.trainer import evaluate_split

    folder = Path(args.checkpoint)
    config_file = folder / "config.yaml"
    expected = None
    if config_file.is_file():
        try:
            raw = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError:
            raw = None
        if not isinstance(raw, dict) or not isinstance(raw.get("model") or {}, dict):
            raise EtarecError(f"{config_file} is corrupt (not a YAML mapping with a model section); "
                              "copy the run folder again or re-run training")
        expected = (raw.get("model") or {}).get("name")
    model, config, _ = load_checkpoint(folder, expected_model=expected)
    data = ensure_prepared(config.data)
    builder = BatchBuilder(data, config.model.long_len, config.model.short_len)
    metrics = evaluate_split(model, builder, data.splits[args.split], config.train.eval_batch_size,
                             progress=not args.no_progress, description=args.split)
    print(json.dumps({"model": config.model.name, "split": args.split, **metrics}, indent=2))


def _report(args) -> None:
    from etarec.report import report_table

    print(report_table([Path(run) for run in args.runs]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etarec", description="CTR prediction with long behaviour sequences (ETA and baselines)")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="raw events -> the canonical Parquet dataset")
    prepare.add_argument("--dataset", choices=["ml-latest-small", "ml-1m", "ml-100k", "taobao", "events"])
    prepare.add_argument("--path", help="raw data folder or file (default: bundled data or ../shared/data)")
    prepare.add_argument("--config", help="take the data section from this YAML config")
    prepare.add_argument("--out", help="output folder (default: prepared/<dataset>)")
    prepare.set_defaults(run=_prepare)

    train = commands.add_parser("train", help="train a model from a YAML config")
    train.add_argument("--config", required=True)
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. model.top_k=32")
    train.add_argument("--out", required=True, help="run folder: config.yaml, model.pt, metrics.json")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a trained run on a split")
    evaluate.add_argument("--checkpoint", required=True, help="a run folder written by `etarec train`")
    evaluate.add_argument("--split", default="test", choices=["train", "valid", "test"])
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.set_defaults(run=_evaluate)

    report = commands.add_parser("report", help="table of test metrics of finished runs")
    report.add_argument("runs", nargs="+", help="run folders holding metrics.json")
    report.set_defaults(run=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen, even in a log file
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

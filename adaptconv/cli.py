"""The ``adaptconv`` command line. Thin: parses arguments and calls the library."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def _param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _short_source(source: str, verbose: bool) -> str:
    if verbose:
        return source
    return source.split(" (")[0] if source.startswith("plugin ") else source.split(":")[0]


def cmd_ops(args: argparse.Namespace) -> int:
    import pandas as pd
    from torch import nn

    from .ops import create_op, get_op, list_ops, op_source, plugin_errors

    conv_params = _param_count(nn.Conv2d(64, 64, 3, padding=1))
    rows = []
    for name in list_ops():
        cls = get_op(name)
        try:
            params = _param_count(create_op(name, 64, 64, 3, padding=1 if "padding" in cls.supports else 0))
            ratio = f"{params / conv_params:.2f}×"
        except Exception as exc:  # a plugin that cannot build the reference layer is reported, not fatal
            params, ratio = f"error: {exc}", ""
        rows.append({
            "name": name,
            "paper": cls.paper,
            "guide": cls.guide,
            "supports": ",".join(a for a in ("stride", "padding", "dilation", "groups", "bias") if a in cls.supports),
            "from_conv": "exact" if cls.function_preserving else "approx",
            "params 64→64 k3": params,
            "vs Conv2d": ratio,
            "source": _short_source(op_source(name), args.verbose),
        })
    print(pd.DataFrame(rows).to_markdown(index=False))
    print(f"\nnn.Conv2d(64, 64, 3): {conv_params} parameters")
    errors = plugin_errors()
    for err in errors:
        print(f"plugin error: {err.entry_point} (from {err.distribution}): {err.error}", file=sys.stderr)
    return 1 if errors else 0


def cmd_check_op(args: argparse.Namespace) -> int:
    from .ops import OpRegistryError, list_ops
    from .ops.conformance import run_checks

    names = list_ops() if args.all else args.names
    if not names:
        print("check-op: give operator names or --all", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"== {name}")
        start = time.perf_counter()
        try:
            results = list(_print_checks(run_checks(name)))
        except OpRegistryError as exc:
            print(f"  FAIL  {exc}")
            failed.append(name)
            continue
        bad = [r for r in results if not r.ok]
        summary = "FAIL" if bad else "ok"
        print(f"  -> {summary}: {sum(r.status == 'pass' for r in results)} passed, {len(bad)} failed, "
              f"{sum(r.status == 'skip' for r in results)} skipped ({time.perf_counter() - start:.1f}s)")
        if bad:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    print(f"\nall {len(names)} operator(s) conform")
    return 0


def parse_assignments(items: list[str]) -> dict:
    """``["task=upsampling", "optimizer.lr=0.01", "measure.batch_sizes=[1,4]"]`` → nested mapping.

    Values are read as YAML scalars/lists (numbers, booleans, null, [lists], {maps}), else strings.
    """
    import yaml

    from .schema import ConfigError, set_dotted

    config: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError([f"{item!r}: expected key=value (dotted keys for nesting, e.g. optimizer.lr=0.01)"])
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(config, key.strip(), value)
    return config


def cmd_trial(args: argparse.Namespace) -> int:
    import json

    from .schema import ConfigError
    from .trial import run_trial
    from .trial.config import parse_trial_config

    try:
        config = parse_assignments(args.assignments)
        parse_trial_config(config)  # all errors before anything runs
    except ConfigError as exc:
        print(f"adaptconv trial: {exc}", file=sys.stderr)
        return 2
    record = run_trial(config)
    text = json.dumps(record, indent=1 if args.full else None, sort_keys=False)
    if args.out:
        from .results.atomic import write_text_atomic

        write_text_atomic(args.out, text)
    if args.full:
        print(text)
    else:
        summary = {k: record[k] for k in ("status", "metrics", "swap", "timing")}
        summary["swap"] = {k: v for k, v in record["swap"].items() if k != "names"}
        if "error" in record:
            summary["error"] = record["error"].get("message")
        print(json.dumps(summary, indent=1))
    return 0 if record["status"] == "ok" else 1


def _print_checks(results):
    for r in results:
        print(f"  {r.status.upper():4}  {r.name}: {r.detail}", flush=True)
        yield r


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptconv", description="Benchmark suite for content-adaptive convolutions")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail and debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ops", help="list the registered operators (built-in and plugins)")
    p.set_defaults(func=cmd_ops)

    p = sub.add_parser("check-op", help="run the conformance checks on operators (non-zero exit on failure)")
    p.add_argument("names", nargs="*", help="registry names of the operators to check")
    p.add_argument("--all", action="store_true", help="check every registered operator")
    p.set_defaults(func=cmd_check_op)

    p = sub.add_parser("trial", help="run one trial from key=value settings and print its record",
                       description="Example: adaptconv trial task=upsampling op=pac steps=200 task_options.scale=8")
    p.add_argument("assignments", nargs="*", metavar="key=value", help="trial config (dotted keys for nesting)")
    p.add_argument("--out", help="also write the full record (JSON) to this file, atomically")
    p.add_argument("--full", action="store_true", help="print the full record, not a summary")
    p.set_defaults(func=cmd_trial)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

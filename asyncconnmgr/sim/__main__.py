"""`python -m asyncconnmgr.sim`: run the scenarios and print their figures.

Every scenario under every available policy by default, each manager policy both with the
bounded count and with the reference behaviour (`bounded_count=False`); `--set
bounded_count=...` runs only that one. Exit status 0, or 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._report import format_table, plot, to_json
from ._run import MANAGER_SETTINGS, available_policies, run_matrix
from ._scenarios import SCENARIOS, Scenario, scenario_fields

__all__ = ["main", "parse_assignment"]


def _value(text: str) -> object:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    if "," in text:
        return tuple(float(part) for part in text.split(","))
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_assignment(text: str) -> tuple[str, object]:
    """`"key=value"` as `(key, value)`: the value read as a bool (true/false), None
    (none), an int, a float, a range ("5,25" -> (5.0, 25.0)) or else a str. Raises
    ValueError naming the assignment if it has no "=" or the key is neither a manager
    setting (`MANAGER_SETTINGS`) nor a scenario parameter."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set expects key=value, got {text!r}")
    if key not in MANAGER_SETTINGS and key not in scenario_fields():
        raise ValueError(
            f"--set {key}: not a manager setting ({', '.join(MANAGER_SETTINGS)}) "
            "nor a scenario parameter (see asyncconnmgr.sim.Scenario)"
        )
    try:
        value = _value(raw)
    except ValueError:
        raise ValueError(f"--set {key}: cannot read {raw!r} as a value") from None
    if key in scenario_fields() and isinstance(value, int) and not isinstance(value, bool):
        kind = str(scenario_fields()[key])
        if "float" in kind:
            value = float(value)
    return key, value


def _names(values: list[str] | None, known: Sequence[str], what: str) -> list[str]:
    if not values:
        return list(known)
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    for name in names:
        if name not in known:
            raise ValueError(f"--{what} {name!r}: not one of {', '.join(known)}")
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m asyncconnmgr.sim",
        description="Measure trim quality under churn and attack (seeded, simulated time).",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help=f"scenario(s) to run, repeatable or comma-separated: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--policy",
        action="append",
        metavar="NAME",
        help="policies to compare, repeatable or comma-separated: "
        f"{', '.join(available_policies())}",
    )
    parser.add_argument("--seed", type=int, default=1, help="the runs' seed (default 1)")
    parser.add_argument("--quick", action="store_true", help="the short forms, for CI")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a manager setting (bounded_count, ceiling, grace_budget, close_concurrency, "
        "close_timeout) or a scenario parameter, e.g. --set ceiling=40 --set duration=120",
    )
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")
    output.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--series", action="store_true", help="with --json: add per-second samples")
    parser.add_argument("--plot", metavar="PATH", help="also write a PNG (needs matplotlib)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line `argv` (default `sys.argv[1:]`); returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        scenario_names = _names(args.scenario, list(SCENARIOS), "scenario")
        policies = _names(args.policy, available_policies(), "policy")
        settings: dict[str, object] = {}
        changes: dict[str, object] = {}
        for text in args.set:
            key, value = parse_assignment(text)
            (settings if key in MANAGER_SETTINGS else changes)[key] = value
        if "duration" in changes:
            # A duration given is the one to run, quick or not.
            changes.setdefault("quick_duration", changes["duration"])
        scenarios: list[Scenario] = [SCENARIOS[name].evolve(**changes) for name in scenario_names]
        figures = run_matrix(
            scenarios,
            policies,
            seed=args.seed,
            settings=settings,
            quick=args.quick,
            backend=args.backend,
        )
    except (TypeError, ValueError) as exc:
        parser.print_usage(sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    notes = []
    if "diversity" not in available_policies():
        notes.append(
            "DiversityPolicy is not in this version of asyncconnmgr: its rows are left out"
        )
    if args.json:
        print(
            to_json(
                figures,
                series=args.series,
                seed=args.seed,
                quick=args.quick,
                settings=settings,
                scenario_changes=changes,
                notes=notes,
            )
        )
    else:
        print(format_table(figures, markdown=args.markdown))
        for note in notes:
            print(f"\nnote: {note}")
    if args.plot:
        try:
            plot(figures, args.plot)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

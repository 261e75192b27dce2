"""``p2pcdn lab run|cleanup|check``: the command line of the namespace lab (docs/lab.md).

Registered in :mod:`lab.cli` and imported only when ``p2pcdn lab`` runs.

Exit status: 0 success; 1 the run failed (a daemon died, a step timed out) or teardown left
something; 2 bad command line or topology; 3 the machine cannot run the lab (not root, ``ip``
or ``tc`` missing); 130/143 interrupted by SIGINT/SIGTERM (after a full teardown).
"""

from __future__ import annotations

import argparse
import datetime
import signal
import sys
from pathlib import Path
from typing import Any

from lab import netns
from lab.topology import TopologyError, load, shipped

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3

EPILOG = """\
examples:
  p2pcdn lab check
  p2pcdn lab run lab/topologies/ci6.toml --scenario connectivity
  p2pcdn lab run ci6 --scenario fast-channel-change --out lab-out/
  p2pcdn lab cleanup            # after a run that was killed with SIGKILL

exit status: 0 ok, 1 run failed, 2 bad command line or topology, 3 machine cannot run the
lab (not root, ip/tc missing), 130/143 interrupted (everything torn down)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="lab_action", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run",
        help="run a scenario on a topology of network namespaces",
        description="Build TOPOLOGY as network namespaces (veth, bridges, tc tbf; netem or the "
        "userspace link emulator for delay/jitter/loss), start the scenario's daemons, run it, "
        "write results.json, plots and report.md to --out, and tear everything down.",
    )
    run.add_argument(
        "topology", metavar="TOPOLOGY", help="a .toml file, or the name of a shipped one"
    )
    run.add_argument(
        "--scenario",
        default=None,
        help="scenario name (default: the topology's, else connectivity)",
    )
    run.add_argument("--out", type=Path, metavar="DIR", help="output directory")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="scenario option (repeatable; overrides the topology's [scenario] table)",
    )
    cleanup = actions.add_parser(
        "cleanup",
        help="remove namespaces, links and processes left by a killed lab run",
        description="Kill the processes and delete the namespaces and links whose names start "
        f"with {netns.NAME_PREFIX} and 4 hex digits (only p2pcdn lab runs use that prefix). "
        "Runs still in progress are left alone unless --force.",
    )
    cleanup.add_argument(
        "--force", action="store_true", help="also remove runs whose runner is still alive"
    )
    actions.add_parser(
        "check",
        help="print what this machine can do (root, ip, tc, netem, tbf)",
        description="Print whether the lab can run here and how it emulates links.",
    )
    actions.add_parser("list", help="list shipped topologies and scenarios")
    parser.epilog = EPILOG


def _value(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text in ("true", "false"):
        return text == "true"
    return text


def run(args: argparse.Namespace) -> int:
    action = args.lab_action
    if action == "check":
        caps = netns.probe()
        for line in caps.lines():
            print(line, flush=True)
        problems = caps.problems()
        print("lab: " + ("ready" if not problems else "cannot run: " + "; ".join(problems)))
        return EXIT_OK if not problems else EXIT_UNAVAILABLE
    if action == "list":
        from lab.scenarios import SCENARIOS

        for name, path in shipped().items():
            print(f"topology {name}: {path}")
        for name, cls in SCENARIOS.items():
            status = "" if cls.implemented else " (not written yet)"
            print(f"scenario {name}{status}: {cls.description}")
        return EXIT_OK
    if action == "cleanup":
        try:
            netns.require(netns.probe())
        except netns.LabUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        for line in netns.cleanup(force=args.force).lines():
            print(line)
        return EXIT_OK
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from lab import scenarios
    from lab.runner import LabRun

    topology_arg: str = args.topology
    path = Path(topology_arg)
    if not path.exists() and topology_arg in shipped():
        path = shipped()[topology_arg]
    try:
        topology = load(path)
        options = dict(topology.settings)
        name = args.scenario or str(options.pop("name", "connectivity"))
        options.pop("name", None)
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise TopologyError(f"--set {item!r}: expected KEY=VALUE")
            options[key] = _value(value)
        scenario = scenarios.get(name, options)
        scenario.validate(topology)
    except (TopologyError, KeyError) as exc:
        print(f"error: {str(exc).strip(chr(34) + chr(39))}", file=sys.stderr)
        return EXIT_USAGE
    try:
        netns.require(netns.probe())
    except netns.LabUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or Path("lab-out") / f"{topology.name}-{scenario.name}-{stamp}"

    def progress(text: str) -> None:
        print(f"lab: {text}", file=sys.stderr, flush=True)

    result = LabRun(topology, scenario, out, progress=progress).execute()
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
    if result.teardown_problems:
        print(f"error: teardown left {', '.join(result.teardown_problems)}", file=sys.stderr)
    report = out / "report.md"
    if result.status == "ok":
        print(f"report: {report}")
    print(f"output: {out}")
    if result.status == "interrupted":
        signum = signal.SIGTERM if "SIGTERM" in (result.error or "") else signal.SIGINT
        return 128 + int(signum)
    return EXIT_OK if result.ok else EXIT_FAILED

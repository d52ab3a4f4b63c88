"""``dialnexa-simulator`` / ``python -m airflow_provider_dialnexa.simulator``: serve the simulator in the foreground.

The first stdout line is ``DIALNEXA_SIMULATOR_URL=http://HOST:PORT`` (flushed), so a parent process that asked
for ``--port 0`` learns the port. Then, for people: the ``export AIRFLOW_CONN_DIALNEXA_DEFAULT=...`` line that
points Airflow at it, and the ids of the calls it created. Ctrl-C (SIGINT) or SIGTERM stop it gracefully.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from airflow_provider_dialnexa.simulator.app import SimulatorApp
from airflow_provider_dialnexa.simulator.server import (
    DEFAULT_HOST,
    URL_PREFIX,
    bind_socket,
    build_server,
    raise_fd_limit,
    url_of,
)
from airflow_provider_dialnexa.simulator.state import DEFAULT_API_KEY, SimState

#: Ids printed for ``--calls``; beyond that the count (List Calls shows them all).
MAX_IDS_SHOWN = 20
DEFAULT_SEED_HOURS = 3


def _time(text: str) -> datetime:
    """An ISO-8601 date or time for ``--between`` (``2026-10-05``, ``2026-10-05T06:00:00Z``); naive = UTC."""
    try:
        value = datetime.fromisoformat(text.strip().removesuffix("Z").removesuffix("z"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO-8601 time, e.g. 2026-10-05T06:00:00Z") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dialnexa-simulator",
        description="A local DialNexa API look-alike on loopback, for trying DAGs without an account.",
        epilog="Example: dialnexa-simulator --calls 3 --seed 500 --between 2026-10-05T06:00:00Z 2026-10-05T09:00:00Z",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8089, help="port, 0 = pick a free one (default %(default)s)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the Bearer token to accept (default %(default)s)")
    parser.add_argument(
        "--calls",
        type=int,
        default=0,
        metavar="N",
        help="create N calls now; they ring and talk for a few seconds each and end within a minute (ids printed)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="create N ended calls (with transcripts) spread evenly over --between, for exports of past hours",
    )
    parser.add_argument(
        "--between",
        nargs=2,
        type=_time,
        metavar=("START", "END"),
        help=f"creation window of --seed, ISO-8601, naive = UTC (default: the {DEFAULT_SEED_HOURS} whole hours "
        "before now)",
    )
    parser.add_argument(
        "--rng-seed",
        type=int,
        default=0,
        help="seed of call ids, outcomes and fault rates: the same value gives the same ids (default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn log level (default %(default)s)",
    )
    return parser


def banner(url: str, api_key: str, calls: Sequence[str], seeded: tuple[int, datetime, datetime] | None) -> str:
    """What a person needs next: the connection line to paste, and what the simulator holds."""
    connection = json.dumps({"conn_type": "dialnexa", "host": url, "password": api_key})
    lines = [
        f"DialNexa simulator on {url} (API key {api_key!r}). Point Airflow at it (paste where Airflow runs):",
        f"export AIRFLOW_CONN_DIALNEXA_DEFAULT={shlex.quote(connection)}",
    ]
    if calls:
        shown = ", ".join(calls[:MAX_IDS_SHOWN])
        more = f" and {len(calls) - MAX_IDS_SHOWN} more" if len(calls) > MAX_IDS_SHOWN else ""
        lines.append(f"Created {len(calls)} calls, ending within a minute: {shown}{more}")
    if seeded:
        count, start, end = seeded
        lines.append(f"Seeded {count} ended calls created in [{_iso(start)}, {_iso(end)})")
    lines.append("Stop with Ctrl-C.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, create the calls, print the URL and the connection line, serve until interrupted."""
    cli = parser()
    args = cli.parse_args(argv)
    if args.calls < 0 or args.seed < 0:
        cli.error("--calls and --seed take a number of calls >= 0")
    if args.between and not args.seed:
        cli.error("--between sets the window of --seed N: add --seed N")
    seeded = None
    if args.seed:
        if args.between:
            start, end = args.between
        else:
            end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            start = end - timedelta(hours=DEFAULT_SEED_HOURS)
        if end <= start:
            cli.error(f"--between: END ({_iso(end)}) must be after START ({_iso(start)})")
        seeded = (args.seed, start, end)
    raise_fd_limit()
    state = SimState(api_key=args.api_key, seed=args.rng_seed)
    call_ids = state.create_calls(args.calls) if args.calls else []
    if seeded:
        state.seed_calls(seeded[0], seeded[1].timestamp(), seeded[2].timestamp())
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:  # most often: another simulator already serves that port
        reason = os.strerror(exc.errno or 0)
        cli.exit(
            1,
            f"dialnexa-simulator: cannot listen on {args.host}:{args.port} ({reason}); stop what uses it, or pass "
            "--port 0 (a free port; the export line it prints has the port) or another --port\n",
        )
    url = url_of(sock)
    print(f"{URL_PREFIX}{url}", flush=True)
    calls = [f"{call_id} ({state.plan(call_id).outcome})" for call_id in call_ids[:MAX_IDS_SHOWN]]
    calls += call_ids[MAX_IDS_SHOWN:]
    print(banner(url, args.api_key, calls, seeded), flush=True)
    # On Ctrl-C uvicorn shuts down gracefully, then re-raises the signal: end quietly, without a traceback.
    with contextlib.suppress(KeyboardInterrupt):
        build_server(SimulatorApp(state), args.log_level, configure_logging=True).run(sockets=[sock])
    print("DialNexa simulator stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

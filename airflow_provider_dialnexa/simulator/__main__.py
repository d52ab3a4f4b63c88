"""``dialnexa-simulator`` / ``python -m airflow_provider_dialnexa.simulator``: serve the simulator in the foreground.

The first stdout line is ``DIALNEXA_SIMULATOR_URL=http://HOST:PORT`` (flushed), so a parent process that asked
for ``--port 0`` learns the port. SIGINT/SIGTERM stop the server gracefully.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, pre-create ``--calls`` calls, print the URL and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="dialnexa-simulator", description="A local DialNexa API simulator.")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8089, help="port, 0 = pick a free one (default %(default)s)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the Bearer token to accept (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of call plans and fault rates (default %(default)s)")
    parser.add_argument("--calls", type=int, default=0, help="pre-create N calls with the default outcome mix")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn log level (default %(default)s)",
    )
    args = parser.parse_args(argv)
    raise_fd_limit()
    state = SimState(api_key=args.api_key, seed=args.seed)
    if args.calls:
        state.create_calls(args.calls)
    sock = bind_socket(args.host, args.port)
    print(f"{URL_PREFIX}{url_of(sock)}", flush=True)
    build_server(SimulatorApp(state), args.log_level, configure_logging=True).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())

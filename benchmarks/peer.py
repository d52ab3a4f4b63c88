"""The peer's response check: ``HttpEventTrigger(response_check_path="benchmarks.peer.call_ended")``.

``HttpEventTrigger`` re-imports (``importlib.reload``) this module on every poll, so it holds nothing
but the check. It uses the provider's own status vocabulary, so both sides agree on what "ended" means
and the comparison is about how the status is fetched, not how it is read.
"""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_dialnexa.status import is_terminal


async def call_ended(response: Any) -> bool:
    """True once ``GET /v1/calls/{id}`` reports a terminal status (``response`` is a ``requests.Response``)."""
    return is_terminal(json.loads(response.content).get("status"))

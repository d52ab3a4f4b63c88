"""DialNexa webhooks as Airflow asset events: the public helpers for DAG authors.

DialNexa POSTs signed deliveries to ``/dialnexa/webhooks/<conn_id>`` on Airflow's api-server (Airflow 3)
or webserver (2.11), served by this provider's plugin (``webhooks.plugin``). Each authentic call-ended
delivery records one event on the connection's calls asset, ``dialnexa://<conn_id>/calls``; a DAG
scheduled on ``calls_ended_asset()`` runs with those events, and ``calls_from_events()`` turns them into
call records without a request to DialNexa. See docs/webhooks.md.

Importing this package does no I/O and imports no web framework or Airflow model: DAG files import it.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_dialnexa.webhooks.consume import calls_from_events
from airflow_provider_dialnexa.webhooks.uri import DEFAULT_CONN_ID, SCHEME, calls_asset_uri

#: Where the plugin mounts the receiver (the route is ``ROUTE_PREFIX + "/webhooks/<conn_id>"``).
ROUTE_PREFIX = "/dialnexa"


def webhook_path(conn_id: str = DEFAULT_CONN_ID) -> str:
    """The receiver's path for a connection, to append to the api-server's (webserver's) public base URL."""
    calls_asset_uri(conn_id)  # validates the connection id
    return f"{ROUTE_PREFIX}/webhooks/{conn_id}"


def calls_ended_asset(conn_id: str = DEFAULT_CONN_ID) -> Any:
    """The asset that gets one event per DialNexa call that ended: ``Asset`` on Airflow 3, ``Dataset`` on 2.11.

    Schedule a DAG on it (``schedule=[calls_ended_asset()]``); its URI is ``dialnexa://<conn_id>/calls``.

    :param conn_id: The Airflow connection whose webhook deliveries the asset collects.
    """
    from airflow.providers.common.compat.sdk import Asset

    return Asset(uri=calls_asset_uri(conn_id))


__all__ = ["ROUTE_PREFIX", "SCHEME", "calls_asset_uri", "calls_ended_asset", "calls_from_events", "webhook_path"]

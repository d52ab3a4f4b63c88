"""The Airflow plugin that serves the receiver: ``POST /dialnexa/webhooks/<conn_id>``.

Registered through the ``airflow.plugins`` entry point, which Airflow loads always (a plugin named in
provider metadata would load only when provider discovery is not lazy, and listing it in both places
makes Airflow 3 report a duplicate). Every Airflow process loads plugins, so importing this module is
cheap: the web framework and the receiver are imported only when the api-server (``fastapi_apps``,
Airflow 3) or the webserver (``flask_blueprints``, 2.11) asks for them.
"""

from __future__ import annotations

import functools
from typing import Any

from airflow.providers.common.compat.sdk import AirflowPlugin

from airflow_provider_dialnexa.webhooks import ROUTE_PREFIX


def _airflow_3() -> bool:
    from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_0_PLUS

    return bool(AIRFLOW_V_3_0_PLUS)


@functools.cache
def _fastapi_app() -> Any:
    from airflow_provider_dialnexa.webhooks._fastapi import create_app

    return create_app()


@functools.cache
def _flask_blueprint() -> Any:
    from airflow_provider_dialnexa.webhooks._flask import create_blueprint

    return create_blueprint()


class DialNexaWebhooksPlugin(AirflowPlugin):
    """DialNexa webhook receiver: signed call-ended deliveries become asset (dataset) events."""

    name = "dialnexa_webhooks"

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        if not _airflow_3():
            return []
        return [{"app": _fastapi_app(), "url_prefix": ROUTE_PREFIX, "name": "DialNexa webhooks"}]

    @property
    def flask_blueprints(self) -> list[Any]:  # type: ignore[override]
        if _airflow_3():  # Airflow 3 serves the FastAPI app; a blueprint would be a second route
            return []
        return [_flask_blueprint()]

"""Apache Airflow provider for DialNexa: wait for AI phone calls to end and load their records.

Importing this package does no I/O: Airflow imports it while parsing DAGs and discovering providers.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

DISTRIBUTION_NAME = "airflow-provider-dialnexa"

# The connection form, declared once and served both ways: as provider-info metadata
# (Airflow 3.2+ reads it without importing the hook) and from
# ``DialNexaHook.get_ui_field_behaviour()`` (Airflow 2.11 - 3.1).
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["schema", "port", "login"],
    "relabeling": {"password": "API Key", "host": "Base URL"},
    "placeholders": {
        "password": "<key_id>:<secret>",
        "host": "https://api.dialnexa.com",
        "extra": '{"timeout": 30, "max_retries": 5, "rate_limit_per_minute": 120}',
    },
}

# Extras stored in ``Connection.extra``; the hook validates them (see ``_connection.py``).
CONN_FIELDS: dict[str, Any] = {
    "timeout": {
        "label": "Request timeout (s)",
        "description": "Read timeout of one HTTP request, in seconds (connect timeout is 10 s).",
        "schema": {"type": ["number", "null"], "minimum": 1, "maximum": 300},
    },
    "max_retries": {
        "label": "Max retries",
        "description": "Retries of one request on connection errors, timeouts, 429 and 5xx.",
        "schema": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
    },
    "rate_limit_per_minute": {
        "label": "Rate budget (requests/min)",
        "description": "Upper bound of requests per minute one process sends with this API key; below it the "
        "rate adapts to DialNexa's rate headers and 429s (0 = no budget).",
        "schema": {"type": ["number", "null"], "minimum": 0, "maximum": 100000},
    },
    "polling": {
        "label": "Trigger polling",
        "description": "'batched' (List Calls for many waits at once) or 'per_call' (Get Call each).",
        "schema": {"type": ["string", "null"], "enum": ["batched", "per_call", None]},
    },
    "webhook_secret": {
        "label": "Webhook secret",
        "description": "The secret of the DialNexa webhook that posts to /dialnexa/webhooks/<conn_id>: deliveries "
        "are accepted only with its HMAC-SHA256 signature (see docs/webhooks.md).",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "webhook_secret_previous": {
        "label": "Previous webhook secret",
        "description": "During a secret rotation, the old secret: deliveries signed with either are accepted. "
        "Clear it once DialNexa signs with the new one.",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
}


def _kebab(behaviour: dict[str, Any]) -> dict[str, Any]:
    return {key.replace("_", "-"): value for key, value in behaviour.items()}


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow's providers manager (entry point ``apache_airflow_provider``)."""
    modules = "airflow_provider_dialnexa.{}.dialnexa"
    integration = "DialNexa"
    return {
        "package-name": DISTRIBUTION_NAME,
        "name": "DialNexa",
        "description": "DialNexa voice-AI calling platform: wait for calls and load call records.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": integration,
                "external-doc-url": "https://dialnexa.com/docs",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": integration, "python-modules": [modules.format("hooks")]}],
        "sensors": [
            {
                "integration-name": integration,
                "python-modules": [modules.format("sensors"), "airflow_provider_dialnexa.sensors.batch"],
            }
        ],
        "operators": [
            {
                "integration-name": integration,
                "python-modules": [modules.format("operators"), "airflow_provider_dialnexa.operators.batch"],
            }
        ],
        "triggers": [
            {
                "integration-name": integration,
                "python-modules": [modules.format("triggers"), "airflow_provider_dialnexa.triggers.batch"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "dialnexa",
                "hook-class-name": "airflow_provider_dialnexa.hooks.dialnexa.DialNexaHook",
                "hook-name": "DialNexa",
                "ui-field-behaviour": _kebab(UI_FIELD_BEHAVIOUR),
                "conn-fields": CONN_FIELDS,
            }
        ],
        # The receiver's asset scheme (dialnexa://<conn_id>/calls): Airflow 3 reads asset-uris, 2.11 dataset-uris.
        "asset-uris": [{"schemes": ["dialnexa"], "handler": "airflow_provider_dialnexa.webhooks.uri.sanitize_uri"}],
        "dataset-uris": [{"schemes": ["dialnexa"], "handler": "airflow_provider_dialnexa.webhooks.uri.sanitize_uri"}],
    }

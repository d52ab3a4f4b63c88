"""The ``dialnexa`` asset URI scheme: ``dialnexa://<conn_id>/calls``, one asset per Airflow connection.

The scheme is registered in the provider metadata (``asset-uris`` on Airflow 3, ``dataset-uris`` on
2.11) with ``sanitize_uri`` as its handler, so Airflow checks every ``dialnexa://`` URI a DAG names.
This module imports nothing from Airflow: DAG parsing calls the handler.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

SCHEME = "dialnexa"
#: The one asset kind so far: the calls of one connection that DialNexa reported as ended.
CALLS_PATH = "/calls"
DEFAULT_CONN_ID = "dialnexa_default"
#: What Airflow accepts as a connection id (``[\w.-]``, at most 250 characters); our URIs carry nothing else.
_CONN_ID = re.compile(r"[A-Za-z0-9_.\-]{1,250}")


def valid_conn_id(conn_id: object) -> bool:
    """True when ``conn_id`` is a plausible Airflow connection id (letters, digits, ``_ . -``, 1-250)."""
    return isinstance(conn_id, str) and _CONN_ID.fullmatch(conn_id) is not None


def calls_asset_uri(conn_id: str = DEFAULT_CONN_ID) -> str:
    """``dialnexa://<conn_id>/calls``: the URI of the asset that gets one event per ended call."""
    if not valid_conn_id(conn_id):
        raise ValueError(
            f"DialNexa connection id {conn_id!r:.80} cannot name a calls asset: use the Airflow connection id "
            "(letters, digits, '_', '.', '-'; e.g. 'dialnexa_default')"
        )
    return f"{SCHEME}://{conn_id}{CALLS_PATH}"


def conn_id_from_uri(uri: str) -> str | None:
    """The connection id a ``dialnexa://<conn_id>/calls`` URI names, or None for any other URI."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != SCHEME or parts.path != CALLS_PATH or parts.query or parts.fragment:
        return None
    return parts.netloc if valid_conn_id(parts.netloc) else None


def sanitize_uri(uri: SplitResult) -> SplitResult:
    """Airflow's URI handler for the ``dialnexa`` scheme: only ``dialnexa://<conn_id>/calls`` is valid.

    Airflow has already lower-cased the scheme, dropped user info and fragment and stripped trailing
    slashes; a connection id is case-sensitive, so the netloc is kept as written.
    """
    if uri.path != CALLS_PATH or uri.query or uri.fragment:
        raise ValueError(f"a DialNexa asset URI must be 'dialnexa://<conn_id>/calls', got {uri.geturl()!r:.120}")
    if not valid_conn_id(uri.netloc):
        raise ValueError(f"a DialNexa asset URI must name an Airflow connection id, got {uri.netloc!r:.120}")
    return uri

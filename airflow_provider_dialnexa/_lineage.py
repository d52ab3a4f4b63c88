"""OpenLineage datasets of the operators, built from what ``execute`` already knows: no request, no connection read.

The OpenLineage provider is optional. It is imported inside these functions, which only its listener reaches
(through the operators' ``get_openlineage_facets_on_complete``), so the provider imports and runs without it.

Naming (OpenLineage's naming spec):
- DialNexa's calls: namespace = the connection's base URL as the hook resolved it while the task ran
  (``https://api.dialnexa.com``, or your proxy's URL), name ``calls`` (the ``/v1/calls`` resource). One dataset
  for every window, filter and call: a name per window or per call would add a node to the lineage graph
  for every run.
- The export file: object storage as ``<scheme>://<bucket>`` + key (``s3://bucket``, ``calls/x.jsonl``), local
  files as ``file`` + absolute path, the same names Airflow's ``file`` asset converter gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_dialnexa._export_assets import asset_uri

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

#: OpenLineage dataset name of DialNexa's calls (namespace: the base URL).
CALLS_DATASET = "calls"


def resolved_base_url(hook: Any) -> str | None:
    """The base URL a hook resolved while the task ran; None if it never read its connection (nothing is read here)."""
    settings = vars(hook).get("settings") if hook is not None else None  # the hook's cached_property, if filled
    return getattr(settings, "base_url", None)


def storage_location(destination: str) -> tuple[str, str]:
    """OpenLineage ``(namespace, name)`` of a file: ``("s3://bucket", "key")``, ``("file", "/abs/path")``."""
    parts = urlsplit(asset_uri(destination))
    scheme = "file" if parts.scheme == "local" else parts.scheme
    if scheme == "file" or not parts.netloc:  # a path, no bucket: the scheme alone, the absolute path
        return (f"{scheme}://{parts.netloc}" if parts.netloc else scheme), parts.path
    return f"{scheme}://{parts.netloc}", parts.path.lstrip("/")


def calls_lineage(base_url: str | None, *, created: bool) -> OperatorLineage:
    """DialNexa's calls as the input (read) or the output (``created``) of a task; nothing if never resolved."""
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

    if base_url is None:
        return OperatorLineage()
    calls = [Dataset(namespace=base_url, name=CALLS_DATASET)]
    return OperatorLineage(outputs=calls) if created else OperatorLineage(inputs=calls)


def export_lineage(base_url: str | None, summary: Mapping[str, Any] | None) -> OperatorLineage:
    """DialNexa's calls in, the written file out with its row count; only what the run got to."""
    from airflow.providers.common.compat.openlineage.facet import (
        OutputDataset,
        OutputStatisticsOutputDatasetFacet,
    )

    lineage = calls_lineage(base_url, created=False)
    if summary is not None:
        namespace, name = storage_location(str(summary["path"]))
        statistics = OutputStatisticsOutputDatasetFacet(rowCount=int(summary["calls"]))
        lineage.outputs.append(
            OutputDataset(namespace=namespace, name=name, outputFacets={"outputStatistics": statistics})
        )
    return lineage

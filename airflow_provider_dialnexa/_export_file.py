"""The file an export writes and what is announced about it; both export operators (calls, batch calls) share it.

``JsonLinesFile``: records stream as JSON Lines (gzip-compressed when the name ends ``.gz``) to a temporary
object next to the destination, moved into place only by ``commit``. Anything else (an error, a wait that stops
the export) removes the temporary object, so readers never see a partial file and a re-run rewrites the same file.

``ExportOperator``: what an export task says about the file: its outlets (the file's asset for a fixed
destination, the task's alias for a templated, task-output or mapped one), the asset event of every file written
(the summary as its ``extra``) and OpenLineage (DialNexa's calls in, the file out with its row count).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import uuid
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.compat.sdk import BaseOperator, ObjectStoragePath

from airflow_provider_dialnexa._export_assets import asset_for, export_alias, record_export_event
from airflow_provider_dialnexa._lineage import export_lineage, resolved_base_url
from airflow_provider_dialnexa._storage import missing_filesystem_hint
from airflow_provider_dialnexa._validation import arrives_at_run_time
from airflow_provider_dialnexa.exceptions import DialNexaConfigError

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context
    from airflow.providers.openlineage.extractors import OperatorLineage

#: One JSON line per record, compact and UTF-8 (one encoder for every record, not one per record).
_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class JsonLinesFile:
    """A JSON Lines file written all or nothing: use it as a context manager and ``commit`` when complete.

    ``write`` buffers ``chunk`` lines and writes them at once: each write through object storage has a cost.

    :raises DialNexaConfigError: on creation, when nothing can be written next to ``destination`` (the message
        says what to install for a URL scheme no filesystem serves).
    """

    def __init__(self, destination: str, *, task_id: str, chunk: int) -> None:
        try:
            self.path = ObjectStoragePath(destination)
            self._temp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex}.tmp"
            if self.path.protocol in ("", "file", "local"):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._raw: IO[bytes] = self._temp.open("wb")
        except Exception as exc:  # before any record: nothing is lost
            fix = missing_filesystem_hint(str(destination), exc) or "check the path and the storage permissions"
            raise DialNexaConfigError(
                f"Task {task_id!r}: cannot write next to destination {str(destination)!r} "
                f"({type(exc).__name__}: {exc}); {fix}"
            ) from exc
        gzipped = self.path.name.endswith(".gz")
        self._out: IO[bytes] | gzip.GzipFile = (
            gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0) if gzipped else self._raw
        )
        self._chunk = chunk
        self._lines: list[bytes] = []
        self.committed = False

    def write(self, record: Mapping[str, Any]) -> None:
        """Add one record (written with the next full chunk, or at ``commit``)."""
        self._lines.append(_to_json(record).encode())
        if len(self._lines) >= self._chunk:
            self._flush()

    def _flush(self) -> None:
        if self._lines:
            self._out.write(b"\n".join(self._lines) + b"\n")
            self._lines.clear()

    def _close(self) -> None:
        try:
            if self._out is not self._raw:
                self._out.close()
        finally:
            self._raw.close()

    def commit(self) -> None:
        """Write what is buffered, close the file and move it into place."""
        self._flush()
        self._close()
        self._temp.rename(self.path)
        self.committed = True

    def __enter__(self) -> JsonLinesFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.committed:
            with contextlib.suppress(Exception):
                self._close()
            with contextlib.suppress(Exception):
                self._temp.unlink()


class ExportOperator(BaseOperator):
    """Base of the export operators: the file's outlets, its asset event and its lineage.

    A subclass calls ``export_outlets`` on its keyword arguments before ``BaseOperator.__init__``, sets
    ``destination`` and then ``asset_alias = self._own_alias()``, and hands each summary it returns through
    ``_published``. ``rows_key`` names the summary's count of lines written.
    """

    #: The summary key that counts the file's lines (OpenLineage ``rowCount``).
    rows_key: ClassVar[str] = "calls"
    #: The summary of the last export this instance wrote (what lineage reports; set by ``_published``).
    _summary: dict[str, Any] | None = None
    destination: Any
    asset_alias: Any

    @staticmethod
    def export_outlets(destination: object, kwargs: dict[str, Any]) -> None:
        """A fixed destination (no outlets given) is the task's outlet asset (dataset on Airflow 2)."""
        if isinstance(destination, str) and not arrives_at_run_time(destination) and not kwargs.get("outlets"):
            asset = asset_for(destination)
            if asset is not None:
                kwargs["outlets"] = [asset]

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:  # type: ignore[override]
        """``BaseOperator.partial`` plus the export alias in ``outlets``: a mapped task's files are known only at
        run time, and Airflow reads a mapped task's outlets from these arguments when it parses the DAG."""
        partial = super().partial(**kwargs)
        dag = partial.kwargs.get("dag")
        if dag is not None:
            alias = export_alias(dag.dag_id, partial.kwargs["task_id"])
            outlets = list(partial.kwargs.get("outlets") or [])
            partial.kwargs["outlets"] = outlets if alias in outlets else [*outlets, alias]
        return partial

    def _own_alias(self) -> Any:
        """The task's export alias, in its outlets: added here for a templated destination, by ``partial`` for a
        mapped task; None for a fixed destination (its own outlet asset carries the event) or without a DAG."""
        if not self.has_dag():
            return None
        alias = export_alias(self.dag_id, self.task_id)
        if alias in self.outlets:
            return alias
        if not arrives_at_run_time(self.destination):
            return None
        self.outlets = [*self.outlets, alias]
        return alias

    @staticmethod
    def _check_destination(destination: object) -> None:
        if not isinstance(destination, str) or not destination.strip():
            raise ValueError(f"destination must be a file URL or path, got {destination!r:.80}")

    def _published(self, context: Context, summary: dict[str, Any] | None) -> dict[str, Any] | None:
        """Keep the summary for lineage and put it on the asset event of the file written."""
        if summary is not None:
            self._summary = summary
            asset = record_export_event(context, self.outlets, self.asset_alias, summary)
            if asset is not None:
                self.log.info("Asset event for %s (alias %s)", asset.uri, getattr(self.asset_alias, "name", None))
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """OpenLineage: DialNexa's calls in, the written file out with its row count; from what ``execute`` kept."""
        return export_lineage(resolved_base_url(vars(self).get("hook")), self._summary, rows_key=self.rows_key)

"""Batch calls on ``DialNexaHook``: create (exactly once), read, page call logs, list, pause/resume/cancel.

A mixin of ``DialNexaHook``: every request goes through the hook's one send step (``_send_once``, ``_get``,
``_aget``), so batches share its rate budget, retries, timeouts and typed errors. What does not need a
transport lives in ``_batches.py`` (fields, titles, reading records) and ``_leads.py`` (leads files).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncGenerator, Generator, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_dialnexa import status as status_
from airflow_provider_dialnexa._batches import (
    ACTIONS,
    MAX_BATCH_PAGES,
    MAX_USER_TITLE,
    BatchPager,
    LocateHint,
    Read,
    as_created_batch,
    batch_title,
    batch_url,
    batches_url,
    check_title,
    create_fields,
    is_match,
    locate_batch,
    validate_batch_id,
)
from airflow_provider_dialnexa._leads import MultipartBody, prepare_leads
from airflow_provider_dialnexa._paging import WindowPager, created_time
from airflow_provider_dialnexa._validation import validate_agent_id
from airflow_provider_dialnexa.exceptions import (
    BATCH_HINTS,
    CREATE_BATCH_HINTS,
    DialNexaBadRequestError,
    DialNexaError,
    DialNexaMalformedResponseError,
    DialNexaRateLimitError,
    DialNexaServerError,
    DialNexaUnconfirmedBatchError,
    describe,
)
from airflow_provider_dialnexa.records import mask_phone_number

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow_provider_dialnexa._connection import ConnectionSettings
    from airflow_provider_dialnexa.policy import RetryPolicy

#: How much further back than the run's start a search for an uploaded batch reaches (as for calls: a day).
BATCH_LOOKUP_MARGIN = 24 * 60 * 60
#: Call-log page size of ``iter_batch_calls`` (List Calls' documented maximum; the server may apply less).
CALL_LOG_PAGE = 200
#: What may be a lead's number in DialNexa's message: '+' and digits (spaces, dots, dashes, brackets between),
#: or a bare run of 8-15 digits. Dates and counts stay readable.
_NUMBER_LIKE = re.compile(r"\+\d[\d ().-]{6,}\d|(?<!\d)\d{8,15}(?!\d)")


def _mask_numbers(exc: DialNexaError) -> DialNexaError:
    """Mask anything that looks like a phone number in DialNexa's message (it may quote a lead's row)."""

    def mask(text: str) -> str:
        return _NUMBER_LIKE.sub(lambda m: str(mask_phone_number(m.group(0))), text)

    exc.args = tuple(mask(arg) if isinstance(arg, str) else arg for arg in exc.args)
    if exc.api_message:
        exc.api_message = mask(exc.api_message)
    return exc


class BatchCallsMixin:
    """``DialNexaHook``'s batch-call methods (``POST/GET /v1/batch-calls``, ``PATCH .../status``)."""

    if TYPE_CHECKING:  # what the mixin uses of DialNexaHook

        @property
        def log(self) -> Any: ...
        @property
        def settings(self) -> ConnectionSettings: ...
        async def asettings(self) -> ConnectionSettings: ...
        def _policy(self, settings: ConnectionSettings) -> RetryPolicy: ...
        def _send_once(self, method: str, url: str, *, subject: str, call_id: str | None, **request: Any) -> Any: ...
        def _get(
            self,
            url: str,
            *,
            params: dict[str, str] | None,
            subject: str,
            call_id: str | None,
            hints: Mapping[int, str] | None = None,
        ) -> Any: ...
        async def _aget(
            self,
            url: str,
            *,
            params: dict[str, str] | None,
            subject: str,
            call_id: str | None,
            hints: Mapping[int, str] | None = None,
        ) -> Any: ...

    # -- create, exactly once ------------------------------------------------------------------------

    def create_batch_call(
        self,
        leads: Any,
        title: str,
        agent_id: str,
        *,
        agent_version_number: int | None = None,
        starts_at: datetime | str | None = None,
        ends_at: datetime | str | None = None,
        calling_hours_start: str | None = None,
        calling_hours_end: str | None = None,
        correlation_id: str | None = None,
        adopt_existing: bool = False,
        placed_after: datetime | None = None,
        validate_leads: bool = True,
        leads_filename: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/batch-calls``: upload a leads file as one batch, at most once per correlation value.

        ``leads`` is a local path, a URL or ``ObjectStoragePath`` (``s3://...``), or rows (an iterable of dicts,
        sent as CSV). The file is checked before upload (a ``phone_number`` column, every number E.164; Excel
        ``.xlsx`` with the ``excel`` extra) and streamed from disk (a remote object is first copied to a local
        temporary file), never read into memory whole.

        DialNexa has no idempotency key, and a batch keeps nothing the caller chooses except its title, so the
        title carries the correlation value: ``"<first 25 characters of title> #<8-character token>"``. A
        POST that may have reached DialNexa (timeout, dropped connection, 5xx, a 2xx without an id) is never sent
        again blindly: List Batch Calls is read for that exact title (created since ``placed_after`` minus a day)
        and the batch found there is returned; only a search that read every page and found none lets the POST go
        again. A 429 created nothing and is sent again after ``Retry-After``; other 4xx raise at once.

        :param correlation_id: The value the batch is unique for (default: random, i.e. no adoption across calls).
        :param adopt_existing: Search before any POST (a retried task whose earlier try may have uploaded).
        :param placed_after: No earlier attempt can have uploaded before this (e.g. the DAG run's start).
        :param validate_leads: Check the file first (default). ``False`` uploads ``.xls`` or files you checked.
        :returns: DialNexa's answer (``id``, ``title``, ``total_records``, ``status``, ``warning``), or the List
            Batch Calls record of the batch an earlier attempt created.
        :raises InvalidLeadsError: before any request; the message names the bad rows, numbers masked.
        :raises DialNexaUnconfirmedBatchError: the batch may exist and no search could tell.
        """
        user_title = check_title(title)
        correlation = correlation_id or f"hook-{uuid.uuid4().hex}"
        full_title = batch_title(user_title, correlation)
        if len(user_title) > MAX_USER_TITLE:
            self.log.warning(
                "DialNexa batch title %r is longer than %d characters: sent as %r (the rest of the 35 allowed "
                "carry the correlation token)",
                user_title,
                MAX_USER_TITLE,
                full_title,
            )
        agent = validate_agent_id(agent_id)
        fields = create_fields(
            full_title,
            agent,
            agent_version_number=agent_version_number,
            starts_at=starts_at,
            ends_at=ends_at,
            calling_hours_start=calling_hours_start,
            calling_hours_end=calling_hours_end,
        )
        since = (placed_after.timestamp() if placed_after is not None else time.time()) - BATCH_LOOKUP_MARGIN
        leads_file = prepare_leads(leads, validate=validate_leads, name=leads_filename)
        try:
            count = "unchecked leads" if leads_file.leads is None else f"{leads_file.leads} leads"
            subject = f"Create Batch Call {full_title!r} ({count}, {leads_file.size:,} bytes)"
            target = (full_title, agent, since)
            if adopt_existing:
                found = self._reconcile_batch(target, subject, cause=None)
                if found is not None:
                    return found
            settings = self.settings
            policy = self._policy(settings)
            failure: DialNexaError | None = None
            uncertain = False
            for attempt in range(1, policy.attempts + 1):
                body = MultipartBody(fields, leads_file)
                try:
                    answer = self._send_once(
                        "POST",
                        batches_url(settings),
                        data=body,
                        headers={"Content-Type": body.content_type},
                        subject=subject,
                        call_id=None,
                        hints=CREATE_BATCH_HINTS,
                        wait_out_timeouts=True,
                    )
                    created = as_created_batch(answer, settings=settings)
                except DialNexaRateLimitError as exc:  # refused before anything was created: safe to send again
                    failure = exc
                except (DialNexaServerError, DialNexaMalformedResponseError) as exc:  # may have created it
                    failure, uncertain = exc, True
                except DialNexaError as exc:  # 4xx: final, nothing was created
                    raise _mask_numbers(exc) from None
                else:
                    self.log.info("%s: created batch %r", describe(subject, settings.conn_id), created["id"])
                    return created
                finally:
                    body.close()
                last = attempt == policy.attempts
                if last and not uncertain:
                    break
                wait = policy.wait(attempt, failure.retry_after)
                next_step = "looking for the batch" if uncertain else "sending again"
                self.log.warning(
                    "%s (attempt %d of %d; %s in %.2f s)", failure, attempt, policy.attempts, next_step, wait
                )
                time.sleep(wait)
                if uncertain:
                    found = self._reconcile_batch(target, subject, cause=failure)
                    if found is not None:
                        return found
                    uncertain = False  # proven: nothing was created
                    if not last:
                        self.log.warning("%s: DialNexa has no such batch; uploading again", describe(subject, None))
            assert failure is not None
            raise failure
        finally:
            leads_file.cleanup()

    def _reconcile_batch(
        self, target: tuple[str, str, float], subject: str, cause: DialNexaError | None
    ) -> dict[str, Any] | None:
        """The batch this upload already created, None if List Batch Calls proves there is none; else raise."""
        settings = self.settings
        try:
            found = self._find_batch(*target)
        except DialNexaUnconfirmedBatchError:
            raise
        except DialNexaError as exc:
            why = f"the upload may have reached DialNexa ({cause})" if cause else "an earlier try may have uploaded it"
            raise DialNexaUnconfirmedBatchError(
                f"{describe(subject, settings.conn_id)}: {why}, and looking for the batch failed: {exc}. "
                f"{DialNexaUnconfirmedBatchError.hint}",
                conn_id=settings.conn_id,
                http_status=exc.http_status,
            ) from exc
        if found is not None:
            self.log.warning(
                "%s: found batch %r created by an earlier attempt; using it instead of uploading again",
                describe(subject, settings.conn_id),
                found.get("id"),
            )
        return found

    def _find_batch(self, title: str, agent_id: str, since: float) -> dict[str, Any] | None:
        """List Batch Calls, every page, for batches with this exact title; None only once every page was read."""
        settings = self.settings
        pager = BatchPager(settings)
        matches: list[dict[str, Any]] = []
        while not pager.done and pager.page <= MAX_BATCH_PAGES:
            read = pager.read()
            data = self._get(read.url, params=read.params, subject=read.subject, call_id=None, hints=BATCH_HINTS)
            matches += [item for item in pager.take(data) if is_match(item, title, since, agent_id)]
            if matches:
                break  # titles carry the token: the first page that has it is enough
        if not matches and not pager.done:
            raise DialNexaUnconfirmedBatchError(
                f"{describe(f'List Batch Calls for title {title!r}', settings.conn_id)}: could not read every batch "
                f"(more than {MAX_BATCH_PAGES} pages). {DialNexaUnconfirmedBatchError.hint}",
                conn_id=settings.conn_id,
            )
        if len(matches) > 1:
            self.log.warning(
                "DialNexa has %d batches titled %r (%s); using the oldest, not uploading another",
                len(matches),
                title,
                ", ".join(str(m["id"]) for m in matches),
            )
        matches.sort(key=lambda item: (created_time(item) is None, created_time(item) or 0, item["id"]))  # type: ignore[operator]
        return matches[0] if matches else None

    # -- read ------------------------------------------------------------------------------------------

    def _drive(self, reads: Generator[Read, Any, Any]) -> Any:
        """Run a read plan from ``_batches`` with sync requests (retried like every read)."""
        try:
            read = next(reads)
            while True:
                data = self._get(read.url, params=read.params, subject=read.subject, call_id=None, hints=BATCH_HINTS)
                read = reads.send(data)
        except StopIteration as stop:
            return stop.value

    async def _adrive(self, reads: Generator[Read, Any, Any]) -> Any:
        """Run a read plan from ``_batches`` with async requests (shared client, no blocking I/O)."""
        try:
            read = next(reads)
            while True:
                data = await self._aget(
                    read.url, params=read.params, subject=read.subject, call_id=None, hints=BATCH_HINTS
                )
                read = reads.send(data)
        except StopIteration as stop:
            return stop.value

    def get_batch_call(self, batch_id: str) -> dict[str, Any]:
        """One batch's record as DialNexa sent it: ``id``, ``title``, ``status``, counters (``total_lead_count``,
        ``sent_lead_count``, ``picked_up_calls``, retry depths...).

        Read from List Batch Calls (where the OpenAPI file documents status and counters) or, when its body
        carries them, from ``GET /v1/batch-calls/{id}`` (see ``_batches.locate_batch``).
        """
        batch_id = validate_batch_id(batch_id)
        return self._drive(locate_batch(batch_id, self.settings))  # type: ignore[no-any-return]

    async def aget_batch_call(self, batch_id: str, hint: LocateHint | None = None) -> dict[str, Any]:
        """Async ``get_batch_call`` for triggers; pass one ``hint`` per waiter so later polls ask one source."""
        batch_id = validate_batch_id(batch_id)
        settings = await self.asettings()
        return await self._adrive(locate_batch(batch_id, settings, hint))  # type: ignore[no-any-return]

    def list_batch_calls(
        self, status: str | list[str] | None = None, *, page_size: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every batch of the workspace (List Batch Calls), each once; ``status`` filters (a list = any of them)."""
        if page_size is not None and not 1 <= page_size <= 100:
            raise ValueError(f"page_size must be between 1 and 100, got {page_size}")
        wanted = ",".join(status) if isinstance(status, list) else status
        pager = BatchPager(self.settings, wanted, page_size)
        while not pager.done:
            read = pager.read()
            data = self._get(read.url, params=read.params, subject=read.subject, call_id=None, hints=BATCH_HINTS)
            yield from pager.take(data)

    def iter_batch_calls(self, batch_id: str, *, page_size: int = CALL_LOG_PAGE) -> Iterator[dict[str, Any]]:
        """Every call log of a batch, retry children included, each once, oldest first.

        Pages ``GET /v1/batch-calls/{id}`` (its ``callLogs``) through the same pager as List Calls
        (``created_at=asc``, the server's page limit followed, a page of only repeated ids fails loudly). When
        the body states a ``total``, fewer call logs than that at the end is an error, never a partial answer.
        """
        batch_id = validate_batch_id(batch_id)
        if not 1 <= page_size <= CALL_LOG_PAGE:
            raise ValueError(f"page_size must be between 1 and {CALL_LOG_PAGE}, got {page_size}")
        settings = self.settings
        url = batch_url(settings, batch_id)
        pager = WindowPager(None, None, {}, page_size, settings)
        total: int | None = None
        while not pager.done:
            subject = f"batch {batch_id!r} call logs page {pager.page}"
            data = self._get(url, params=pager.params(), subject=subject, call_id=None, hints=BATCH_HINTS)
            if isinstance(data, dict):
                meta = data["meta"] if isinstance(data.get("meta"), dict) else data
                stated = meta.get("total")
                if isinstance(stated, int) and not isinstance(stated, bool):
                    total = stated
            yield from pager.take(data)
        if total is not None and len(pager.seen) < total:
            raise DialNexaMalformedResponseError(
                f"{describe(f'batch {batch_id!r}', settings.conn_id)}: DialNexa says the batch has {total} call "
                f"logs, but paging returned {len(pager.seen)}. Stopping instead of returning a partial list. "
                f"{DialNexaMalformedResponseError.hint}",
                conn_id=settings.conn_id,
                http_status=200,
            )

    async def aiter_batch_calls(
        self, batch_id: str, *, page_size: int = CALL_LOG_PAGE
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Async ``iter_batch_calls`` (same pager and checks)."""
        batch_id = validate_batch_id(batch_id)
        settings = await self.asettings()
        url = batch_url(settings, batch_id)
        pager = WindowPager(None, None, {}, page_size, settings)
        total: int | None = None
        while not pager.done:
            subject = f"batch {batch_id!r} call logs page {pager.page}"
            data = await self._aget(url, params=pager.params(), subject=subject, call_id=None, hints=BATCH_HINTS)
            if isinstance(data, dict) and isinstance(data.get("total"), int):
                total = data["total"]
            for record in pager.take(data):
                yield record
        if total is not None and len(pager.seen) < total:
            raise DialNexaMalformedResponseError(
                f"{describe(f'batch {batch_id!r}', settings.conn_id)}: DialNexa says the batch has {total} call "
                f"logs, but paging returned {len(pager.seen)}",
                conn_id=settings.conn_id,
                http_status=200,
            )

    # -- pause, resume, cancel -------------------------------------------------------------------------

    def pause_batch_call(self, batch_id: str) -> dict[str, Any]:
        """Stop new calls of a batch (calls already ringing finish). Returns DialNexa's answer."""
        return self._change_batch(batch_id, "pause")

    def resume_batch_call(self, batch_id: str) -> dict[str, Any]:
        """Continue a paused batch. Returns DialNexa's answer."""
        return self._change_batch(batch_id, "resume")

    def cancel_batch_call(self, batch_id: str) -> dict[str, Any]:
        """Stop a batch for good; queued calls are removed. Returns DialNexa's answer."""
        return self._change_batch(batch_id, "cancel")

    def _change_batch(self, batch_id: str, action: str) -> dict[str, Any]:
        """``PATCH /v1/batch-calls/{id}/status``: a state transition, so after an ambiguous failure, or a refusal
        that may mean an earlier attempt already did it, the batch is read first and the action sent again only
        if the batch is not where the action leads yet (DialNexa: "re-read state, then retry")."""
        batch_id = validate_batch_id(batch_id)
        settings = self.settings
        url = f"{batch_url(settings, batch_id)}/status"
        subject = f"{action} batch {batch_id!r}"
        policy = self._policy(settings)
        failure: DialNexaError | None = None
        for attempt in range(1, policy.attempts + 1):
            uncertain = False
            try:
                answer = self._send_once(
                    "PATCH", url, json={"action": action}, subject=subject, call_id=None, hints=BATCH_HINTS
                )
            except DialNexaRateLimitError as exc:
                failure = exc
            except (DialNexaServerError, DialNexaMalformedResponseError) as exc:
                failure, uncertain = exc, True
            except DialNexaBadRequestError as exc:  # 400/409: maybe already done (by an earlier attempt)
                done = self._already(batch_id, action)
                if done is not None:
                    return done
                raise exc from None
            else:
                self.log.info("%s: %s", describe(subject, settings.conn_id), status_.normalise(_status_of(answer)))
                return answer if isinstance(answer, dict) else {"success": True, "answer": answer}
            if attempt == policy.attempts:
                break
            wait = policy.wait(attempt, failure.retry_after)
            self.log.warning("%s (attempt %d of %d; again in %.2f s)", failure, attempt, policy.attempts, wait)
            time.sleep(wait)
            if uncertain:
                done = self._already(batch_id, action)
                if done is not None:
                    return done
        assert failure is not None
        raise failure

    def _already(self, batch_id: str, action: str) -> dict[str, Any] | None:
        """A synthetic answer if the batch already is where ``action`` leads, else None."""
        record = self.get_batch_call(batch_id)
        current = status_.normalise(record.get("status"))
        if current not in ACTIONS[action]:
            return None
        self.log.info("DialNexa batch %r is already %r: nothing to %s", batch_id, current, action)
        campaign = {"id": batch_id, "status": current, "title": record.get("title", record.get("name"))}
        return {"success": True, "message": f"Batch already {current}", "campaign": campaign}


def _status_of(answer: Any) -> object:
    if isinstance(answer, dict):
        campaign = answer.get("campaign")
        if isinstance(campaign, dict):
            return campaign.get("status")
        return answer.get("status", answer.get("message"))
    return answer

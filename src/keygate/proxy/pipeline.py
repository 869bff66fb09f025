"""The one path every proxied request runs once its route is resolved to a plan:

    plan: [target (provider, adapter | None), ...]
      └─► for each target, within one retry budget: attempt.forward
            (admit → pick key → one exchange → classify → retry) ─► relay
      └─► out of targets: give_up answers the last refusal, or says why there was none

A plan is the prefix route's one provider (`proxy.plan.PrefixPlan`) or the unified endpoint's
targets in order (`proxy.unified.Plan`); the steps are the same for both. A target is passed
over at once when it cannot serve now; a failure before the first byte moves on to the next
target; the last target's failure is the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from keygate.http.asgi import respond
from keygate.http.errors import GatewayError, retry_after_headers
from keygate.proxy.attempt import Failure, Outgoing, forward
from keygate.proxy.forward import response_headers
from keygate.proxy.redact import redactor_for
from keygate.proxy.suggest import did_you_mean, suggest, with_suggestions
from keygate.proxy.translated import answer_locally

if TYPE_CHECKING:
    from keygate.proxy.exchange import Exchange
    from keygate.proxy.unified import Try
    from keygate.runtime.gateway import Gateway

NO_RETRY = (b"x-should-retry", b"false")


class Plan(Protocol):
    """Where a request may go, in order (`legs`: the targets to try, a client's lists and
    limits already applied), and what each target is sent."""

    legs: list[Try]

    def budget(self, legs: list[Try]) -> int:
        """Retries for the whole chain of several targets."""
        ...

    def prepare(self, leg: Try, ex: Exchange) -> Outgoing | None:
        """What `leg` is sent, the exchange set up for it; None: the adapter answered."""
        ...


async def run(gw: Gateway, ex: Exchange, send: Any, plan: Plan, unified: bool = False) -> None:
    """`unified`: the client named its model on the unified endpoint (`/v1/...`), so the
    names a 404 suggests are the merged list's (else the provider's own)."""
    legs = plan.legs
    final = len(legs) - 1
    budget = plan.budget(legs) if final else -1  # -1: the one provider's own
    failure = None
    for i, leg in enumerate(legs):
        rt, target, _ = leg
        last = i == final
        if not last and not rt.pool.usable_now():
            ex.via.append(f"{target} (no usable key)")
            continue
        out = plan.prepare(leg, ex)
        if out is None:
            await answer_locally(ex, send)
            return
        left = None if budget < 0 else 0 if not last else max(0, budget - ex.retries)
        failure = await forward(gw, rt, ex, send, out, left, not last)
        if failure is None:
            if target is not None:
                ex.via.append(target.name)
            return
        if target is not None:
            ex.via.append(f"{target.name} ({failure.reason()})")
        if last or not failure.retryable or ex.retries >= budget:
            break
        ex.retries += 1
    assert failure is not None
    model: str = getattr(plan, "model", "") or ex.model  # as the client named it
    hint = None
    if model and not failure.rt.cfg.force_model:
        hint = partial(suggest, gw, failure.rt, model, unified, ex.client)
    await give_up(ex, send, failure, hint)


async def give_up(
    ex: Exchange, send: Any, failure: Failure, hint: Callable[[], list[str]] | None = None
) -> None:
    """Out of tries, or no key to try with: relay the last refusal, or say why ourselves.
    Once keygate has retried, the client's SDK is told not to retry on top (x-should-retry).
    `hint`: the model names a 404 may suggest (a mistyped model)."""
    rt, last, last_error, wait = failure.rt, failure.last, failure.last_error, failure.wait
    cfg = rt.cfg
    retried = ex.retries > 0
    if last is not None:
        status, raw_headers, err_body, injected = last
        # cold path: every key of the pool, not only the one this try injected
        redactor = redactor_for(cfg.name)
        headers = response_headers(raw_headers)
        if ex.adapter is not None:  # the refusal in the client's family, status kept
            err_body, headers = ex.adapter.error(status, err_body, headers)
        # scrubbed as the client reads it (a translation may join what came in pieces)
        err_body = redactor.scrub(err_body, rt.pool.entries, injected)
        headers = redactor.scrub_headers(headers, rt.pool.entries, injected)
        if status == 404 and hint is not None:
            err_body, headers = _suggesting(ex, err_body, headers, hint())
        if retried or status in (401, 403):
            headers = [h for h in headers if h[0] != b"x-should-retry"] + [NO_RETRY]
        # the body may have been cut by the error limit or a broken upstream: say what we send
        headers = [h for h in headers if h[0] != b"content-length"] + [
            (b"content-length", str(len(err_body)).encode()),
            *ex.served,
        ]
        ex.status = status
        ex.error = f"upstream answered {status}"
        ex.finishing = True
        await respond(send, status, headers, err_body)
        return
    if last_error is not None:
        if retried:
            last_error.retry = False  # keygate already retried on another try
        raise last_error
    if wait is None:
        if not rt.pool.entries:  # as the prefix route says it (a routed target gets here)
            raise GatewayError(503, f"no API key configured for provider '{cfg.name}'", "no_keys")
        raise GatewayError(
            503,
            f"no usable API key for provider '{cfg.name}' (all invalid, exhausted or disabled)",
            "no_usable_key",
        )
    what = "has spent its quota" if failure.quota else "is cooling down"
    raise GatewayError(
        429,
        f"every key of provider '{cfg.name}' {what}; retry in {wait:.1f}s",
        "keys_quota_exhausted" if failure.quota else "keys_cooling",
        retry_after_headers(wait),
    )


def _suggesting(
    ex: Exchange, body: bytes, headers: list[tuple[bytes, bytes]], names: list[str]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """An upstream's 404 with "did you mean" in its message; one without a message to add to
    (not JSON) becomes keygate's own 404 in the client's shape, saying the same."""
    if not names:
        return body, headers
    added = with_suggestions(body, names)
    if added is not None:
        return added, headers
    dialect = ex.adapter.client if ex.adapter is not None else ex.wire
    assert dialect is not None
    own = dialect.error_body(404, f"not found upstream; {did_you_mean(names)}", "model_not_found")
    kept = [h for h in headers if h[0] not in (b"content-type", b"content-encoding")]
    return own, [*kept, (b"content-type", b"application/json")]

"""Generation with heads switched off: the unchanged and the ablated continuation, as JSON or streamed (SSE).

The work runs on the model thread one token per slice, so other requests go between tokens, and it stops
when the client disconnects (JSON: polled; stream: the stream is closed).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.api.deps import ServiceDep, checked_heads, checked_ids
from app.api.encode import dumps
from app.api.errors import error_body
from app.api.generate_schemas import ContinuationOut, GenerateIn, GenerateOut, StepEvent, TokenOut
from app.api.schemas import ERRORS
from app.errors import ClientGone, InvalidInput, ServiceError
from app.inspect.engine.runs import token_strings
from app.inspect.intervene.generation import (
    Continuation,
    Sampling,
    Step,
    continuation_text,
    eos_ids,
    first_difference,
    steps,
)
from app.service import Service

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["generation"])
STREAM: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/json": {}, "text/event-stream": {}}, "description": "JSON, or SSE"}
}


def _continuation(svc: Service, prompt: list[int], c: Continuation) -> ContinuationOut:
    tokenizer = svc.model.tokenizer
    return ContinuationOut(
        token_ids=c.token_ids,
        tokens=token_strings(tokenizer, c.token_ids),
        text=continuation_text(tokenizer, prompt, c.token_ids, eos_ids(svc.model)),
        logprobs=c.logprobs,
        stop=c.stop,
    )


def _step_event(svc: Service, step: Step) -> bytes:
    rows = [
        None
        if i is None or lp is None
        else TokenOut(id=i, token=token_strings(svc.model.tokenizer, [i])[0], logprob=lp)
        for i, lp in zip(step.token_ids, step.logprobs, strict=True)
    ]
    event = StepEvent(index=step.index, baseline=rows[0], ablated=rows[1] if len(rows) > 1 else None)
    return _sse("token", event.model_dump())


def _sse(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n"


def _announced(
    work: Generator[Step, None, GenerateOut], tell: Callable[[Step], object]
) -> Generator[Step, None, GenerateOut]:
    """`work`, handing each step to `tell` as it is made (on the model thread)."""
    try:
        while True:
            try:
                step = next(work)
            except StopIteration as done:
                result: GenerateOut = done.value
                return result
            tell(step)
            yield step
    finally:
        work.close()


@router.post("/generate", response_model=GenerateOut, responses={**ERRORS, **STREAM})
async def generate(body: GenerateIn, svc: ServiceDep, request: Request) -> Any:
    """Continue the text with the unchanged model and, with `ablate`, with those heads switched off, side by side.

    With `Accept: text/event-stream` the tokens stream as `token` events, then one `end` event holding the
    JSON response (or an `error` event).
    """
    heads = checked_heads(svc.model.adapter.layout, body.ablate, "ablate")
    ids = checked_ids(svc, body.text)
    if len(ids) + body.max_new_tokens > svc.max_tokens:
        raise InvalidInput(
            f"the text is {len(ids)} tokens and max_new_tokens is {body.max_new_tokens}: together "
            f"{len(ids) + body.max_new_tokens}, over this server's max_tokens {svc.max_tokens}"
        )
    sampling = Sampling(body.temperature, body.top_p, body.seed if body.seed is not None else secrets.randbits(63))

    def work() -> Generator[Step, None, GenerateOut]:
        means = svc.run_for(body.text, ids).head_means if heads and body.mode == "mean" else None
        rows = yield from steps(svc.model, ids, body.max_new_tokens, heads, body.mode, means, sampling)
        outs = [_continuation(svc, ids, c) for c in rows]
        return GenerateOut(
            tokens=token_strings(svc.model.tokenizer, ids),
            token_ids=ids,
            baseline=outs[0],
            ablated=outs[1] if heads else None,
            first_difference=first_difference(rows[0].token_ids, rows[1].token_ids) if heads else None,
            seed=None if sampling.greedy else sampling.seed,
        )

    n_tokens = len(ids) + body.max_new_tokens
    if "text/event-stream" not in request.headers.get("accept", ""):
        return await svc.sliced("generation", work(), request.is_disconnected, n_tokens=n_tokens)

    loop = asyncio.get_running_loop()
    made: asyncio.Queue[Step] = asyncio.Queue()
    announced = _announced(work(), lambda step: loop.call_soon_threadsafe(made.put_nowait, step))
    closed = asyncio.Event()  # set when the stream ends, however it ends

    async def gone() -> bool:
        return closed.is_set() or await request.is_disconnected()

    task = asyncio.ensure_future(svc.sliced("generation", announced, gone, n_tokens=n_tokens))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # ClientGone after a close: nobody reads it
    await asyncio.sleep(0)  # admission runs now: busy or not ready is still a plain JSON 503
    if task.done():
        task.result()
    return StreamingResponse(
        _events(svc, task, made, closed), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


async def _events(
    svc: Service, task: asyncio.Future[GenerateOut], made: asyncio.Queue[Step], closed: asyncio.Event
) -> AsyncIterator[bytes]:
    """`token` events as the steps arrive, then `end` (or `error`); closing the stream stops the work."""
    try:
        while not task.done() or not made.empty():
            if not made.empty():
                yield _step_event(svc, made.get_nowait())
                continue
            arrived = asyncio.ensure_future(made.get())
            either: set[asyncio.Future[Any]] = {arrived, task}
            done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if arrived in done:
                yield _step_event(svc, arrived.result())
            else:
                arrived.cancel()
        try:
            out = task.result()
        except ClientGone:
            return
        except ServiceError as exc:
            yield _sse("error", error_body(exc.code, str(exc) if exc.detail is None else exc.detail))
        except Exception:
            log.exception("generation failed mid-stream")
            yield _sse("error", error_body("internal_error", "generation failed; see the server log"))
        else:
            yield _sse("end", out.model_dump())
    finally:
        closed.set()  # the client went away (or we are done): the work stops within one token

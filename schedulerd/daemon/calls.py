"""What wraps every RPC handler: the bounds of its request (schedulerd/bounds.py),
checked before anything else runs; the end of its audit record; the last line of
defence against an unexpected exception; and the API's metrics (calls by method and
status code, and how long unary ones took: docs/metrics.md).

A handler that raises something other than an abort is a bug: the caller gets
INTERNAL with a reference number, never UNKNOWN with the text of a Python exception
(which can carry paths and values); the traceback goes to the daemon's log.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from schedulerd import bounds
from schedulerd.auth.identity import ANONYMOUS, SCOPE_NAMES, Identity
from schedulerd.daemon.audit import AuditTrail
from schedulerd.daemon.metrics import DaemonMetrics

log = logging.getLogger("schedulerd.calls")
_refs = itertools.count(1)


class CallWrapper(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        audit: AuditTrail,
        identify: Callable[[Any], Identity],
        metrics: DaemonMetrics | None = None,
    ) -> None:
        self.audit = audit
        self.identify = identify
        self.metrics = metrics
        # The wrapped handler of each method, made once: wrapping on every call cost
        # tens of µs of a SubmitJob (issue 15). Registered handlers never change.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def _refuse_malformed(
        self, method: str, request: Any, context: grpc.aio.ServicerContext
    ) -> None:
        """INVALID_ARGUMENT naming the field, before any work; audited."""
        refusal = bounds.check_request(request, SCOPE_NAMES)
        if refusal is None:
            return
        try:
            who = self.identify(context)
        except Exception:  # an invalid credential: the malformed request is the news
            who = ANONYMOUS
        self.audit.refused_call(who, _action_name(method), "INVALID_ARGUMENT", refusal.message)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal.message)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        entry = self._wrapped.get(details.method)
        if entry is None or entry[0] is not handler:
            entry = self._wrapped[details.method] = (handler, self._wrap(details.method, handler))
        return entry[1]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._measured(method, self._unary(method, handler.unary_unary)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._measured_stream(method, self._stream(method, handler.unary_stream)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._measured_stream(method, self._stream(method, handler.stream_stream)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client streaming: we serve none

    def _unary(self, method: str, behavior: Any) -> Any:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.audit.set_peer(context.peer())
            await self._refuse_malformed(method, request, context)
            token = self.audit.begin_call()
            result, detail = "ok", ""
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                result, detail = _status(context)
                raise
            except Exception:
                result, detail = "INTERNAL", "internal error"
                await _internal(context, method)
            finally:
                self.audit.end_call(token, result, detail)

        return wrapped

    def _stream(self, method: str, behavior: Any) -> Any:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            self.audit.set_peer(context.peer())
            if not hasattr(request, "__aiter__"):  # a request stream is checked per message
                await self._refuse_malformed(method, request, context)
            token = self.audit.begin_call()
            result, detail = "ok", ""
            try:
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                result, detail = _status(context)
                raise
            except Exception:
                result, detail = "INTERNAL", "internal error"
                await _internal(context, method)
            finally:
                self.audit.end_call(token, result, detail)

        return wrapped

    def _measured(self, method: str, behavior: Any) -> Any:
        metrics = self.metrics
        if metrics is None:
            return behavior
        name = _action_name(method)

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            began, code = time.perf_counter(), ""
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"  # the caller went away
                raise
            finally:
                seconds = time.perf_counter() - began
                metrics.api_call(name, code or _code_name(context), seconds)

        return wrapped

    def _measured_stream(self, method: str, behavior: Any) -> Any:
        metrics = self.metrics
        if metrics is None:
            return behavior
        name = _action_name(method)

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            code = ""
            metrics.streams.labels(name).inc()
            try:
                async for item in behavior(request, context):
                    yield item
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"
                raise
            finally:
                metrics.streams.labels(name).dec()
                metrics.api_call(name, code or _code_name(context), None)

        return wrapped


def _code_name(context: grpc.aio.ServicerContext) -> str:
    """The status the call ended with: OK unless it was aborted or set otherwise."""
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


def _action_name(method: str) -> str:
    """/schedulerd.api.v1.Scheduler/SubmitJob -> Scheduler.SubmitJob (as Action says)."""
    service, _, name = method.rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}.{name}"


def _status(context: grpc.aio.ServicerContext) -> tuple[str, str]:
    code = context.code()
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    return name, context.details() or ""


async def _internal(context: grpc.aio.ServicerContext, method: str) -> None:
    ref = next(_refs)
    log.exception("internal error %d in %s", ref, method)
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error (reference {ref} in the daemon's log)"
    )

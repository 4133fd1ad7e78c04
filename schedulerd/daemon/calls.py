"""What wraps every RPC handler: the bounds of its request (schedulerd/bounds.py),
checked before anything else runs; the end of its audit record; and the last line of
defence against an unexpected exception.

A handler that raises something other than an abort is a bug: the caller gets
INTERNAL with a reference number, never UNKNOWN with the text of a Python exception
(which can carry paths and values); the traceback goes to the daemon's log.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from schedulerd import bounds
from schedulerd.auth.identity import ANONYMOUS, SCOPE_NAMES, Identity
from schedulerd.daemon.audit import AuditTrail

log = logging.getLogger("schedulerd.calls")
_refs = itertools.count(1)


class CallWrapper(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, audit: AuditTrail, identify: Callable[[Any], Identity]) -> None:
        self.audit = audit
        self.identify = identify

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
        method = details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, handler.stream_stream),
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

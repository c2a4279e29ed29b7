"""Turning typed errors into gRPC status (with machine-readable code and retry-after trailers).

The mapping itself is ``common.grpc_errors`` (``serde.abort_with_error_async``), shared with the agent;
these decorators only make every handler use it and keep tracebacks out of responses.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from common import serde
from common.errors import EdgefleetError

log = logging.getLogger(__name__)
R = TypeVar("R")
#: The servicer context of grpc.aio handlers (request/response types are protobuf, i.e. Any here).
Context = grpc.aio.ServicerContext[Any, Any]


def unary(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Map typed errors of a unary (or stream-request) handler to status codes; never leak tracebacks."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Context) -> R:
        try:
            return await fn(self, request, context)
        except EdgefleetError as exc:
            await serde.abort_with_error_async(context, exc)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:
            log.exception("%s failed", fn.__name__)
            await serde.abort_with_error_async(context, exc)  # INTERNAL, without the exception's text

    return wrapper


def streaming(fn: Callable[..., AsyncIterator[R]]) -> Callable[..., AsyncIterator[R]]:
    """The same for handlers that stream responses (async generators)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Context) -> AsyncIterator[R]:
        try:
            async for item in fn(self, request, context):
                yield item
        except EdgefleetError as exc:
            await serde.abort_with_error_async(context, exc)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:
            log.exception("%s failed", fn.__name__)
            await serde.abort_with_error_async(context, exc)

    return wrapper

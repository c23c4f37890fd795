"""The one module that touches gRPC and Envoy's generated ext_proc protos (both untyped):
ProcessingRequests in as typed `Event`s, ProcessingResponses out as opaque messages, and
the gRPC server with the ext_proc and grpc.health.v1 services on it.

Everything else in warmgw.epp sees only `Event`, `Reply` and the functions here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from enum import Enum
from typing import Any, NamedTuple

import grpc  # type: ignore[import-untyped]
from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb  # type: ignore[import-untyped]
from google.protobuf import (  # type: ignore[import-untyped]
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    struct_pb2,
)

PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"

Reply = object  # a ProcessingResponse, opaque outside this module


class Kind(Enum):
    REQUEST_HEADERS = "request_headers"
    REQUEST_BODY = "request_body"
    REQUEST_TRAILERS = "request_trailers"
    RESPONSE_HEADERS = "response_headers"
    RESPONSE_BODY = "response_body"
    RESPONSE_TRAILERS = "response_trailers"
    OTHER = "other"


# envoy.extensions.filters.http.ext_proc.v3.ProcessingMode.BodySendMode
BODY_NONE, BODY_STREAMED, BODY_BUFFERED, BODY_BUFFERED_PARTIAL, BODY_FULL_DUPLEX = range(5)


class Event(NamedTuple):
    """One ProcessingRequest, as the session reads it."""

    kind: Kind
    headers: dict[str, str]  # lower-case names (pseudo-headers keep their colon)
    body: bytes
    eos: bool  # end of this direction's stream
    # body modes from the stream's first message (protocol_config), -1 when absent
    request_mode: int = -1
    response_mode: int = -1
    served: str = ""  # metadata envoy.lb x-gateway-destination-endpoint-served, if given


def decode(msg: Any) -> Event:
    which = msg.WhichOneof("request")
    req_mode = resp_mode = -1
    if msg.HasField("protocol_config"):
        req_mode = int(msg.protocol_config.request_body_mode)
        resp_mode = int(msg.protocol_config.response_body_mode)
    served = ""
    if msg.HasField("metadata_context"):
        lb = msg.metadata_context.filter_metadata.get("envoy.lb")
        if lb is not None and "x-gateway-destination-endpoint-served" in lb.fields:
            served = lb.fields["x-gateway-destination-endpoint-served"].string_value
    if which in ("request_headers", "response_headers"):
        h = getattr(msg, which)
        headers = {x.key.lower(): (x.raw_value.decode("latin-1") if x.raw_value else x.value)
                   for x in h.headers.headers}
        return Event(Kind(which), headers, b"", bool(h.end_of_stream), req_mode, resp_mode,
                     served)
    if which in ("request_body", "response_body"):
        b = getattr(msg, which)
        return Event(Kind(which), {}, bytes(b.body), bool(b.end_of_stream), req_mode,
                     resp_mode, served)
    if which in ("request_trailers", "response_trailers"):
        return Event(Kind(which), {}, b"", True, req_mode, resp_mode, served)
    return Event(Kind.OTHER, {}, b"", False, req_mode, resp_mode, served)


def _set(headers: list[tuple[str, str]]) -> Any:
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    return pb.HeaderMutation(set_headers=[
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, raw_value=v.encode()),
                                   append_action=overwrite)
        for k, v in headers])


def _metadata(metadata: dict[str, dict[str, str]] | None) -> Any:
    if not metadata:
        return None
    s = struct_pb2.Struct()
    for ns, fields in metadata.items():
        s.fields[ns].struct_value.update(fields)
    return s


def _common(headers: list[tuple[str, str]] | None, body: bytes | None, eos: bool,
            clear_route_cache: bool = False) -> Any:
    c = pb.CommonResponse(clear_route_cache=clear_route_cache)
    if headers:
        c.header_mutation.CopyFrom(_set(headers))
    if body is not None:
        c.body_mutation.streamed_response.body = body
        c.body_mutation.streamed_response.end_of_stream = eos
    return c


def headers_reply(request: bool, headers: list[tuple[str, str]] | None = None,
                  metadata: dict[str, dict[str, str]] | None = None) -> Reply:
    """The answer to request (or response) headers; `headers` set (overwriting), and the
    route cache cleared so that Envoy's routing sees them."""
    r = pb.HeadersResponse(response=_common(headers, None, False, bool(headers)))
    out = pb.ProcessingResponse(dynamic_metadata=_metadata(metadata))
    (out.request_headers if request else out.response_headers).CopyFrom(r)
    return out


def body_reply(request: bool, streamed: bytes | None = None, eos: bool = False,
               headers: list[tuple[str, str]] | None = None,
               metadata: dict[str, dict[str, str]] | None = None) -> Reply:
    """The answer to a body message: streamed (full-duplex mode: the bytes Envoy passes
    on, which the server owns) or none (the body goes on unchanged); with header mutations
    (buffered mode, where the headers were already answered)."""
    r = pb.BodyResponse(response=_common(headers, streamed, eos, bool(headers)))
    out = pb.ProcessingResponse(dynamic_metadata=_metadata(metadata))
    (out.request_body if request else out.response_body).CopyFrom(r)
    return out


def trailers_reply(request: bool) -> Reply:
    out = pb.ProcessingResponse()
    (out.request_trailers if request else out.response_trailers).CopyFrom(pb.TrailersResponse())
    return out


def immediate(status: int, headers: list[tuple[str, str]], body: bytes, details: str) -> Reply:
    r = pb.ImmediateResponse(body=body, details=details, headers=_set(headers))
    r.status.code = status
    return pb.ProcessingResponse(immediate_response=r)


# -- grpc.health.v1, built here rather than taken from grpcio-health-checking ------------

def _health_classes() -> tuple[Any, Any]:
    f = descriptor_pb2.FileDescriptorProto(name="warmgw_health.proto", package="grpc.health.v1",
                                           syntax="proto3")
    req = f.message_type.add(name="HealthCheckRequest")
    req.field.add(name="service", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    resp = f.message_type.add(name="HealthCheckResponse")
    enum = resp.enum_type.add(name="ServingStatus")
    for i, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        enum.value.add(name=name, number=i)
    resp.field.add(name="status", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
                   type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
                   label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName(
                "grpc.health.v1.HealthCheckRequest")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName(
                "grpc.health.v1.HealthCheckResponse")))


HealthRequest, HealthResponse = _health_classes()
SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3


# -- the server ----------------------------------------------------------------------------

Process = Callable[[AsyncIterator[Event]], AsyncIterator[Reply]]
Health = Callable[[str], int]  # service name -> SERVING, NOT_SERVING or SERVICE_UNKNOWN


class Server:
    """grpc.aio server with ExternalProcessor.Process and Health.Check."""

    def __init__(self, process: Process, health: Health) -> None:
        async def events(requests: Any) -> AsyncIterator[Event]:
            async for msg in requests:
                yield decode(msg)

        async def process_rpc(requests: Any, context: Any) -> AsyncIterator[Any]:
            async for reply in process(events(requests)):
                yield reply

        async def check(request: Any, context: Any) -> Any:
            status = health(request.service)
            if status == SERVICE_UNKNOWN:
                await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
            return HealthResponse(status=status)

        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self._server.add_generic_rpc_handlers([
            grpc.method_handlers_generic_handler(EXT_PROC_SERVICE, {
                "Process": grpc.stream_stream_rpc_method_handler(
                    process_rpc, request_deserializer=pb.ProcessingRequest.FromString,
                    response_serializer=pb.ProcessingResponse.SerializeToString)}),
            grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
                "Check": grpc.unary_unary_rpc_method_handler(
                    check, request_deserializer=HealthRequest.FromString,
                    response_serializer=HealthResponse.SerializeToString)}),
        ])

    async def start(self, host: str, port: int) -> int:
        bound = int(self._server.add_insecure_port(f"{host}:{port}"))
        if bound == 0:
            raise OSError(f"cannot listen on {host}:{port} for the endpoint picker")
        await self._server.start()
        return bound

    async def stop(self, grace: float) -> None:
        await self._server.stop(grace)

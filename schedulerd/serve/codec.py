"""A ServiceSpec to and from its two wire forms: the API's protobuf message and the
JSON the store keeps."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from schedulerd.api.v1 import serving_pb2 as pb
from schedulerd.serve.spec import SPEC_FIELDS, ServiceSpec


def spec_from_pb(msg: pb.ServiceSpec) -> ServiceSpec:
    """As given: zeros stay zeros (the caller fills defaults with with_defaults())."""
    return ServiceSpec(
        name=msg.name,
        consumer=msg.consumer,
        user=msg.user,
        command=tuple(msg.command),
        env=dict(msg.env),
        working_dir=msg.working_dir,
        gpus_per_replica=msg.gpus_per_replica,
        min_replicas=msg.min_replicas,
        max_replicas=msg.max_replicas,
        target_in_flight=msg.target_in_flight,
        readiness_path=msg.readiness_path,
        scale_down_delay_s=msg.scale_down_delay_s,
        scale_to_zero=msg.scale_to_zero,
        priority=msg.priority,
        public=msg.public,
        window_s=msg.window_s,
        max_queue=msg.max_queue,
        queue_timeout_s=msg.queue_timeout_s,
        request_timeout_s=msg.request_timeout_s,
    )


def spec_to_pb(spec: ServiceSpec) -> pb.ServiceSpec:
    values: dict[str, Any] = {name: getattr(spec, name) for name in SPEC_FIELDS}
    values["command"] = list(spec.command)
    return pb.ServiceSpec(**values)


def spec_to_json(spec: ServiceSpec) -> str:
    return json.dumps(asdict(spec), sort_keys=True)


def spec_from_json(text: str) -> ServiceSpec:
    raw = json.loads(text)
    raw["command"] = tuple(raw["command"])
    known = {k: v for k, v in raw.items() if k in SPEC_FIELDS}
    return ServiceSpec(**known)

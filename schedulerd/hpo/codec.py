"""An ExperimentSpec to and from its two wire forms: the API's protobuf message
and the JSON the store keeps."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from schedulerd.api.v1 import experiments_pb2 as pb
from schedulerd.api.v1 import jobs_pb2
from schedulerd.hpo.spec import (
    CategoricalParam,
    Choice,
    ExperimentSpec,
    FloatParam,
    IntParam,
    Param,
    PrunerSpec,
)

_DIRECTIONS: dict[int, str] = {pb.DIRECTION_MAXIMIZE: "maximize"}  # else: minimize
_SAMPLERS: dict[int, str] = {
    pb.SAMPLER_RANDOM: "random",
    pb.SAMPLER_GRID: "grid",
    pb.SAMPLER_TPE: "tpe",
}
_PRUNERS: dict[int, str] = {
    pb.PRUNER_MEDIAN: "median",
    pb.PRUNER_ASHA: "asha",
    pb.PRUNER_HYPERBAND: "hyperband",
    pb.PRUNER_NONE: "none",
}


def _reverse(mapping: dict[int, str]) -> dict[str, int]:
    return {v: k for k, v in mapping.items()}


# -- values -----------------------------------------------------------------


def value_to_pb(v: Choice) -> pb.ParamValue:
    if isinstance(v, bool):  # before int: bool is an int in Python
        return pb.ParamValue(bool_value=v)
    if isinstance(v, int):
        return pb.ParamValue(int_value=v)
    if isinstance(v, float):
        return pb.ParamValue(float_value=v)
    return pb.ParamValue(string_value=str(v))


def value_from_pb(v: pb.ParamValue) -> Choice:
    kind = v.WhichOneof("kind")
    if kind is None:
        return ""
    result: Choice = getattr(v, kind)
    return result


# -- spec <-> protobuf ------------------------------------------------------


def spec_to_pb(spec: ExperimentSpec) -> pb.ExperimentSpec:
    msg = pb.ExperimentSpec(
        name=spec.name,
        consumer=spec.consumer,
        user=spec.user,
        command=list(spec.command),
        env=spec.env,
        working_dir=spec.working_dir,
        params=[_param_to_pb(p) for p in spec.params],
        metric=spec.metric,
        direction=pb.DIRECTION_MAXIMIZE if spec.direction == "maximize" else pb.DIRECTION_MINIMIZE,
        sampler=_reverse(_SAMPLERS).get(spec.sampler, pb.SAMPLER_UNSPECIFIED),  # type: ignore[arg-type]
        pruner=pb.PrunerSpec(
            kind=_reverse(_PRUNERS).get(spec.pruner.kind, pb.PRUNER_UNSPECIFIED),  # type: ignore[arg-type]
            min_resource=spec.pruner.min_resource,
            max_resource=spec.pruner.max_resource,
            reduction_factor=spec.pruner.reduction_factor,
            startup_trials=spec.pruner.startup_trials,
            warmup_steps=spec.pruner.warmup_steps,
        ),
        max_trials=spec.max_trials,
        max_parallel=spec.max_parallel,
        gpus=jobs_pb2.GpuRequest(min=spec.gpus_min, max=spec.gpus_max),
        priority=spec.priority,
    )
    if spec.seed is not None:
        msg.seed = spec.seed
    return msg


def _param_to_pb(p: Param) -> pb.Param:
    if isinstance(p, FloatParam):
        fr = pb.FloatRange(low=p.low, high=p.high, log=p.log)
        if p.step is not None:
            fr.step = p.step
        return pb.Param(name=p.name, float_range=fr)
    if isinstance(p, IntParam):
        ir = pb.IntRange(low=p.low, high=p.high, log=p.log)
        if p.step is not None:
            ir.step = p.step
        return pb.Param(name=p.name, int_range=ir)
    choices = [value_to_pb(c) for c in p.choices]
    return pb.Param(name=p.name, categorical=pb.Categorical(choices=choices))


def spec_from_pb(msg: pb.ExperimentSpec) -> ExperimentSpec:
    """The API's spec, with the documented defaults for unset fields (0 means
    the default for the pruner's numbers; an unset GPU max means rigid)."""
    pr = msg.pruner
    gmin = msg.gpus.min
    return ExperimentSpec(
        name=msg.name,
        consumer=msg.consumer,
        user=msg.user,
        command=tuple(msg.command),
        params=tuple(_param_from_pb(p) for p in msg.params),
        metric=msg.metric or "objective",
        direction=_DIRECTIONS.get(msg.direction, "minimize"),
        sampler=_SAMPLERS.get(msg.sampler, "tpe"),
        seed=msg.seed if msg.HasField("seed") else None,
        pruner=PrunerSpec(
            kind=_PRUNERS.get(pr.kind, "none"),
            min_resource=pr.min_resource or 1,
            max_resource=pr.max_resource,
            reduction_factor=pr.reduction_factor or 3,
            startup_trials=pr.startup_trials or 5,
            warmup_steps=pr.warmup_steps,
        ),
        max_trials=msg.max_trials,
        max_parallel=msg.max_parallel,
        gpus_min=gmin,
        gpus_max=max(msg.gpus.max, gmin) if msg.gpus.max else gmin,
        priority=msg.priority,
        env=dict(msg.env),
        working_dir=msg.working_dir,
    )


def _param_from_pb(p: pb.Param) -> Param:
    kind = p.WhichOneof("kind")
    if kind == "float_range":
        fr = p.float_range
        return FloatParam(p.name, fr.low, fr.high, fr.log, fr.step if fr.HasField("step") else None)
    if kind == "int_range":
        ir = p.int_range
        return IntParam(p.name, ir.low, ir.high, ir.log, ir.step if ir.HasField("step") else None)
    if kind == "categorical":
        return CategoricalParam(p.name, tuple(value_from_pb(c) for c in p.categorical.choices))
    return CategoricalParam(p.name, ())  # no kind given: refused as an empty space


# -- spec <-> JSON (the store) ----------------------------------------------


def spec_to_json(spec: ExperimentSpec) -> str:
    data = asdict(spec)
    data["params"] = [_param_to_dict(p) for p in spec.params]
    return json.dumps(data)


def _param_to_dict(p: Param) -> dict[str, Any]:
    kind = {FloatParam: "float", IntParam: "int", CategoricalParam: "categorical"}[type(p)]
    return {"type": kind, **asdict(p)}


def spec_from_json(text: str) -> ExperimentSpec:
    data = json.loads(text)
    params: list[Param] = []
    for d in data.pop("params"):
        kind = d.pop("type")
        if kind == "float":
            params.append(FloatParam(**d))
        elif kind == "int":
            params.append(IntParam(**d))
        else:
            params.append(CategoricalParam(d["name"], tuple(d["choices"])))
    data["command"] = tuple(data["command"])
    data["pruner"] = PrunerSpec(**data["pruner"])
    return ExperimentSpec(params=tuple(params), **data)

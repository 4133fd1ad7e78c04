"""schedulerd.bounds: every request within its limits, a typed refusal naming the field
otherwise, and nothing raised for any message protobuf can decode."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedulerd import bounds
from schedulerd.api.v1 import admin_pb2, agent_pb2, experiments_pb2, jobs_pb2
from schedulerd.bounds import Refusal, check_request
from schedulerd.core import submission

SCOPES = ("submit", "read", "admin", "experiments")
# Enum numbers protobuf keeps although no name has them (an old or a hostile client).
UNKNOWN: Any = [99]
UNSPECIFIED: Any = [0]
BAD_KIND: Any = 7
ASHA = experiments_pb2.PRUNER_ASHA


def spec(**kw: Any) -> jobs_pb2.JobSpec:
    base: dict[str, Any] = {
        "consumer": "/team/project",
        "command": ["python", "train.py"],
        "gpus": jobs_pb2.GpuRequest(min=1, max=0),
    }
    base.update(kw)
    return jobs_pb2.JobSpec(**base)


def submit(**kw: Any) -> jobs_pb2.SubmitJobRequest:
    return jobs_pb2.SubmitJobRequest(spec=spec(**kw))


def exp(**kw: Any) -> experiments_pb2.CreateExperimentRequest:
    base: dict[str, Any] = {
        "consumer": "/team",
        "command": ["python", "t.py", "{lr}"],
        "params": [
            experiments_pb2.Param(
                name="lr", float_range=experiments_pb2.FloatRange(low=1e-4, high=0.1, log=True)
            )
        ],
        "max_trials": 10,
        "max_parallel": 2,
        "gpus": jobs_pb2.GpuRequest(min=1),
    }
    base.update(kw)
    return experiments_pb2.CreateExperimentRequest(spec=experiments_pb2.ExperimentSpec(**base))


def gpu(index: int = 0, **kw: Any) -> agent_pb2.GpuInfo:
    return agent_pb2.GpuInfo(index=index, uuid=f"GPU-{index}", model="H100", **kw)


def register(**kw: Any) -> agent_pb2.AgentMessage:
    base: dict[str, Any] = {"node": "n1", "pool": "default", "gpus": [gpu(0), gpu(1)]}
    base.update(kw)
    return agent_pb2.AgentMessage(register=agent_pb2.Register(**base))


def report(**kw: Any) -> agent_pb2.JobReport:
    base: dict[str, Any] = {"job_id": 1, "attempt": 0, "phase": agent_pb2.PHASE_RUNNING}
    base.update(kw)
    return agent_pb2.JobReport(**base)


def token(**kw: Any) -> admin_pb2.CreateTokenRequest:
    base: dict[str, Any] = {"user": "alice", "ttl_seconds": 3600.0}
    base.update(kw)
    return admin_pb2.CreateTokenRequest(**base)


def choice(**kw: Any) -> experiments_pb2.Param:
    return experiments_pb2.Param(
        name="c",
        categorical=experiments_pb2.Categorical(choices=[experiments_pb2.ParamValue(**kw)]),
    )


# (rule, request, the refused field or None, a fragment of the message)
CASES: list[tuple[str, Message, str | None, str]] = [
    # -- JobSpec ---------------------------------------------------------------------
    ("job-within-bounds", submit(), None, ""),
    ("job-elastic-within-bounds", submit(gpus=jobs_pb2.GpuRequest(min=2, max=8)), None, ""),
    ("consumer-required", submit(consumer=""), "spec.consumer", "not a consumer path"),
    ("consumer-absolute", submit(consumer="team"), "spec.consumer", "not a consumer path"),
    ("consumer-syntax", submit(consumer="/Team"), "spec.consumer", "lowercase letters"),
    ("consumer-no-empty-name", submit(consumer="/a//b"), "spec.consumer", "not a consumer"),
    (
        "consumer-path-at-most-256",
        submit(consumer="/" + "/".join(["a" * 60] * 5)),
        "spec.consumer",
        "at most 256",
    ),
    ("consumer-name-at-most-64", submit(consumer="/" + "a" * 65), "spec.consumer", "at most 64"),
    ("name-at-most-256", submit(name="x" * 257), "spec.name", "257 characters, at most 256"),
    ("user-at-most-64", submit(user="u" * 65), "spec.user", "at most 64"),
    ("command-required", submit(command=[]), "spec.command", "a command (argv) is required"),
    ("command-program-not-empty", submit(command=[""]), "spec.command", "required"),
    (
        "command-at-most-1024-args",
        submit(command=["x"] * 1025),
        "spec.command",
        "1,025 arguments, at most 1,024",
    ),
    (
        "command-at-most-64KiB",
        submit(command=["x", "y" * 69_999]),
        "spec.command",
        "70,000 bytes of argv, at most 65,536",
    ),
    (
        "command-bytes-are-utf8",
        submit(command=["x", "é" * 33_000]),
        "spec.command",
        "66,001 bytes of argv",
    ),
    ("command-no-nul", submit(command=["x", "a\0b"]), "spec.command[1]", "NUL"),
    (
        "env-at-most-256",
        submit(env={f"V{i}": "" for i in range(257)}),
        "spec.env",
        "257 variables",
    ),
    ("env-name-syntax", submit(env={"1X": "v"}), "spec.env", "not a variable name"),
    ("env-name-no-equals", submit(env={"A=B": "v"}), "spec.env", "not a variable name"),
    ("env-name-at-most-256", submit(env={"A" * 257: "v"}), "spec.env", "not a variable name"),
    ("env-value-at-most-32KiB", submit(env={"A": "v" * 32_769}), "spec.env[A]", "32,768"),
    ("env-value-no-nul", submit(env={"A": "\0"}), "spec.env[A]", "NUL"),
    (
        "env-at-most-64KiB-in-all",
        submit(env={"A": "v" * 30_000, "B": "v" * 30_000, "C": "v" * 30_000}),
        "spec.env",
        "90,003 bytes of environment, at most 65,536",
    ),
    ("working-dir-absolute", submit(working_dir="rel/dir"), "spec.working_dir", "absolute"),
    ("working-dir-may-be-empty", submit(working_dir=""), None, ""),
    ("working-dir-at-most-4096", submit(working_dir="/" + "d" * 4096), "spec.working_dir", "4,096"),
    ("working-dir-no-nul", submit(working_dir="/a\0"), "spec.working_dir", "NUL"),
    ("gpus-min-at-least-1", submit(gpus=jobs_pb2.GpuRequest()), "spec.gpus.min", "at least 1"),
    (
        "gpus-max-not-below-min",
        submit(gpus=jobs_pb2.GpuRequest(min=4, max=2)),
        "spec.gpus.max",
        "2 is below min 4",
    ),
    (
        "gpus-max-at-most-1000000",
        submit(gpus=jobs_pb2.GpuRequest(min=1, max=4294967295)),
        "spec.gpus.max",
        "4,294,967,295 GPUs, at most 1,000,000",
    ),
    (
        "gpus-min-at-most-1000000",
        submit(gpus=jobs_pb2.GpuRequest(min=1_000_001)),
        "spec.gpus.min",
        "at most 1,000,000",
    ),
    ("priority-at-most-1e6", submit(priority=1_000_001), "spec.priority", "outside"),
    ("priority-at-least-minus-1e6", submit(priority=-(2**31)), "spec.priority", "outside"),
    ("priority-bounds-are-allowed", submit(priority=-1_000_000), None, ""),
    # -- SubmitJobs --------------------------------------------------------------------
    (
        "batch-at-most-1000",
        jobs_pb2.SubmitJobsRequest(jobs=[submit()] * 1001),
        "jobs",
        "1,001 jobs in one batch, at most 1,000",
    ),
    ("batch-may-be-empty", jobs_pb2.SubmitJobsRequest(), None, ""),
    (
        "batch-names-the-job",
        jobs_pb2.SubmitJobsRequest(jobs=[submit(), submit(command=[])]),
        "jobs[1].spec.command",
        "job 1 of 2: spec.command: a command (argv) is required",
    ),
    # -- other job calls ---------------------------------------------------------------
    ("get-job-id-required", jobs_pb2.GetJobRequest(), "id", "an id is required"),
    ("get-job-id-fits-sqlite", jobs_pb2.GetJobRequest(id=2**63), "id", "not an id"),
    ("cancel-job-id-required", jobs_pb2.CancelJobRequest(), "id", "required"),
    ("list-jobs-everything", jobs_pb2.ListJobsRequest(), None, ""),
    ("list-jobs-subtree-slash", jobs_pb2.ListJobsRequest(consumer="/a/"), None, ""),
    ("list-jobs-consumer-syntax", jobs_pb2.ListJobsRequest(consumer="a%"), "consumer", "path"),
    ("list-jobs-user-at-most-64", jobs_pb2.ListJobsRequest(user="u" * 65), "user", "at most 64"),
    ("list-jobs-known-states", jobs_pb2.ListJobsRequest(states=UNKNOWN), "states[0]", "not a job"),
    (
        "list-jobs-no-unspecified",
        jobs_pb2.ListJobsRequest(states=UNSPECIFIED),
        "states[0]",
        "not a job",
    ),
    ("list-jobs-token-digits", jobs_pb2.ListJobsRequest(page_token="x1"), "page_token", "not"),
    ("list-jobs-token-size", jobs_pb2.ListJobsRequest(page_token="9" * 21), "page_token", "not"),
    ("list-jobs-token", jobs_pb2.ListJobsRequest(page_token="42", limit=2**32 - 1), None, ""),
    (
        "watch-at-most-10000-ids",
        jobs_pb2.WatchJobsRequest(ids=range(1, 10_002)),
        "ids",
        "10,001 ids, at most 10,000",
    ),
    ("watch-ids-positive", jobs_pb2.WatchJobsRequest(ids=[1, 0]), "ids[1]", "required"),
    ("logs-offset-fits", jobs_pb2.StreamLogsRequest(id=1, offset=2**64 - 1), "offset", "beyond"),
    ("logs-id-required", jobs_pb2.StreamLogsRequest(), "id", "required"),
    # -- admin -------------------------------------------------------------------------
    ("policy-text-at-most-1MiB", admin_pb2.ApplyPolicyRequest(text="#" * (2**20 + 1)), "text", ""),
    ("policy-source-name", admin_pb2.ApplyPolicyRequest(source_name="s" * 257), "source_name", ""),
    ("drain-node-syntax", admin_pb2.DrainNodeRequest(node="-n1"), "node", "not a node name"),
    ("drain-node-length", admin_pb2.DrainNodeRequest(node="n" * 64), "node", "at most 63"),
    ("drain-reason", admin_pb2.DrainNodeRequest(node="n1", reason="r" * 1025), "reason", "1,024"),
    ("drain-ok", admin_pb2.DrainNodeRequest(node="gpu-01.rack_2", reason="fan"), None, ""),
    ("undrain-node-syntax", admin_pb2.UndrainNodeRequest(node="a b"), "node", "node name"),
    ("forget-node-required", admin_pb2.ForgetNodeRequest(), "node", "node name"),
    ("token-ok", token(scopes=["read", "submit"]), None, ""),
    ("token-user-syntax", token(user="Alice"), "user", "not a user name"),
    ("token-node-syntax", token(user="Node-1", node=True), None, ""),
    ("token-ttl-finite", token(ttl_seconds=math.inf), "ttl_seconds", "finite"),
    ("token-ttl-nan", token(ttl_seconds=math.nan), "ttl_seconds", "finite"),
    ("token-ttl-at-least-60s", token(ttl_seconds=59), "ttl_seconds", "outside 60..31,622,400"),
    ("token-ttl-at-most-a-year", token(ttl_seconds=4e7), "ttl_seconds", "outside"),
    ("token-scopes-known", token(scopes=["root"]), "scopes[0]", "not a scope (known: admin,"),
    ("token-scopes-once", token(scopes=["read", "read"]), "scopes[1]", "twice"),
    ("token-scopes-at-most-16", token(scopes=["read"] * 17), "scopes", "17 scopes"),
    ("revoke-token-id", admin_pb2.RevokeTokenRequest(), "id", "required"),
    ("audit-identity", admin_pb2.ListAuditRequest(identity="i" * 129), "identity", "128"),
    # -- agents ------------------------------------------------------------------------
    ("register-ok", register(jobs=[report()]), None, ""),
    ("register-node-syntax", register(node="n 1"), "register.node", "node name"),
    ("register-pool-syntax", register(pool="a/b"), "register.pool", "node name"),
    (
        "register-at-most-64-gpus",
        register(gpus=[gpu(i) for i in range(65)]),
        "register.gpus",
        "65 GPUs",
    ),
    (
        "register-gpu-indices-unique",
        register(gpus=[gpu(0), gpu(0)]),
        "register.gpus[1].index",
        "twice",
    ),
    ("register-gpu-index-below-1024", register(gpus=[gpu(1024)]), "register.gpus[0].index", ""),
    (
        "register-gpu-uuid-at-most-128",
        register(gpus=[agent_pb2.GpuInfo(uuid="u" * 129)]),
        "register.gpus[0].uuid",
        "",
    ),
    (
        "register-gpu-memory",
        register(gpus=[gpu(0, memory_bytes=2**64 - 1)]),
        "register.gpus[0].memory_bytes",
        "",
    ),
    ("register-hostname", register(hostname="h" * 257), "register.hostname", ""),
    ("register-address", register(address="a" * 257), "register.address", ""),
    ("register-agent-version", register(agent_version="v" * 257), "register.agent_version", ""),
    (
        "register-at-most-10000-reports",
        register(jobs=[report()] * 10_001),
        "register.jobs",
        "10,001 job reports",
    ),
    (
        "register-reports-checked",
        register(jobs=[report(), report(message="m" * 4097)]),
        "register.jobs[1].message",
        "4,097 characters, at most 4,096",
    ),
    ("report-ok", agent_pb2.AgentMessage(report=report(message="exit 1")), None, ""),
    ("report-job-id", agent_pb2.AgentMessage(report=report(job_id=0)), "report.job_id", ""),
    ("report-phase-known", agent_pb2.AgentMessage(report=report(phase=9)), "report.phase", ""),
    ("report-time-finite", agent_pb2.AgentMessage(report=report(time=math.nan)), "report.time", ""),
    (
        "report-gpu-index",
        agent_pb2.AgentMessage(report=report(gpu_indices=[1024])),
        "report.gpu_indices[0]",
        "",
    ),
    ("agent-message-empty", agent_pb2.AgentMessage(), "msg", "empty"),
    ("heartbeat-ok", agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat()), None, ""),
    (
        "log-data-at-most-1MiB",
        agent_pb2.AgentMessage(log_data=agent_pb2.LogData(data=b"x" * (2**20 + 1))),
        "log_data.data",
        "",
    ),
    # -- experiments -------------------------------------------------------------------
    ("experiment-ok", exp(), None, ""),
    ("experiment-command", exp(command=[]), "spec.command", "required"),
    ("experiment-consumer", exp(consumer="x"), "spec.consumer", "path"),
    (
        "experiment-at-most-64-params",
        exp(params=[experiments_pb2.Param(name=f"p{i}") for i in range(65)]),
        "spec.params",
        "65 parameters",
    ),
    (
        "experiment-param-kind",
        exp(params=[experiments_pb2.Param(name="p")]),
        "spec.params[0]",
        "float_range",
    ),
    (
        "experiment-param-name",
        exp(params=[experiments_pb2.Param(name="p" * 65)]),
        "spec.params[0].name",
        "",
    ),
    (
        "experiment-float-finite",
        exp(
            params=[
                experiments_pb2.Param(
                    name="x", float_range=experiments_pb2.FloatRange(low=0, high=math.inf)
                )
            ]
        ),
        "spec.params[0].float_range.high",
        "finite",
    ),
    (
        "experiment-float-bounded",
        exp(
            params=[
                experiments_pb2.Param(
                    name="x", float_range=experiments_pb2.FloatRange(low=-1e308, high=0)
                )
            ]
        ),
        "spec.params[0].float_range.low",
        "outside",
    ),
    (
        "experiment-float-step-finite",
        exp(
            params=[
                experiments_pb2.Param(
                    name="x", float_range=experiments_pb2.FloatRange(low=0, high=1, step=math.nan)
                )
            ]
        ),
        "spec.params[0].float_range.step",
        "finite",
    ),
    (
        "experiment-int-bounded",
        exp(
            params=[
                experiments_pb2.Param(
                    name="x", int_range=experiments_pb2.IntRange(low=0, high=2**62)
                )
            ]
        ),
        "spec.params[0].int_range.high",
        "outside",
    ),
    (
        "experiment-at-most-1000-choices",
        exp(
            params=[
                experiments_pb2.Param(
                    name="c",
                    categorical=experiments_pb2.Categorical(
                        choices=[experiments_pb2.ParamValue(int_value=i) for i in range(1001)]
                    ),
                )
            ]
        ),
        "spec.params[0].categorical.choices",
        "1,001 choices",
    ),
    (
        "experiment-choice-finite",
        exp(params=[choice(float_value=math.nan)]),
        "spec.params[0].categorical.choices[0]",
        "finite",
    ),
    (
        "experiment-choice-text",
        exp(params=[choice(string_value="s" * 1025)]),
        "spec.params[0].categorical.choices[0]",
        "",
    ),
    (
        "experiment-choice-set",
        exp(params=[choice()]),
        "spec.params[0].categorical.choices[0]",
        "needs a value",
    ),
    ("experiment-trials", exp(max_trials=100_001), "spec.max_trials", "outside 0..100,000"),
    ("experiment-parallel", exp(max_parallel=1001), "spec.max_parallel", "outside 0..1,000"),
    ("experiment-seed", exp(seed=-1), "spec.seed", "outside 0..4,294,967,295"),
    (
        "experiment-pruner",
        exp(pruner=experiments_pb2.PrunerSpec(kind=ASHA, max_resource=2**40)),
        "spec.pruner.max_resource",
        "",
    ),
    (
        "experiment-pruner-kind",
        exp(pruner=experiments_pb2.PrunerSpec(kind=BAD_KIND)),
        "spec.pruner.kind",
        "",
    ),
    ("experiment-sampler", exp(sampler=9), "spec.sampler", ""),
    ("experiment-gpus", exp(gpus=jobs_pb2.GpuRequest(min=0)), "spec.gpus.min", ""),
    ("experiment-priority", exp(priority=2**30), "spec.priority", ""),
    ("experiment-metric", exp(metric="m" * 257), "spec.metric", ""),
    ("get-experiment-id", experiments_pb2.GetExperimentRequest(), "id", ""),
    ("stop-experiment-id", experiments_pb2.StopExperimentRequest(), "id", ""),
    ("watch-experiment-id", experiments_pb2.WatchExperimentRequest(), "id", ""),
    (
        "list-experiments-consumer",
        experiments_pb2.ListExperimentsRequest(consumer="a"),
        "consumer",
        "",
    ),
    (
        "report-trial-ok",
        experiments_pb2.ReportTrialRequest(experiment_id=1, job_id=2, value=0.5),
        None,
        "",
    ),
    (
        "report-trial-finite",
        experiments_pb2.ReportTrialRequest(experiment_id=1, job_id=2, value=math.inf),
        "value",
        "finite",
    ),
    (
        "report-trial-job",
        experiments_pb2.ReportTrialRequest(experiment_id=1, value=1.0),
        "job_id",
        "",
    ),
    # -- nothing to bound --------------------------------------------------------------
    ("get-policy", admin_pb2.GetPolicyRequest(), None, ""),
    ("whoami", admin_pb2.WhoAmIRequest(), None, ""),
]


@pytest.mark.parametrize(
    ("request_", "field", "fragment"), [pytest.param(*c[1:], id=c[0]) for c in CASES]
)
def test_each_rule(request_: Message, field: str | None, fragment: str) -> None:
    got = check_request(request_, SCOPES)
    if field is None:
        assert got is None, got
        return
    assert isinstance(got, Refusal), f"not refused: {request_}"[:200]
    assert got.field == field, got
    if field.startswith("jobs["):  # a job of a batch: "job I of N: spec.command: ..."
        i = field[5 : field.index("]")]
        assert got.message.startswith(f"job {i} of "), got
        assert f": {field.split('.', 1)[1]}: " in got.message, got
    else:
        assert got.message.startswith(f"{field}: "), got
    assert fragment in got.message, got
    assert str(got) == got.message


def test_the_rule_names_are_unique() -> None:
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names))


def test_limits_agree_with_the_core_and_the_transport() -> None:
    assert bounds.MAX_GPUS == submission.MAX_JOB_GPUS
    assert bounds.MAX_PAGE_BYTES < bounds.MAX_MESSAGE_BYTES
    # The largest job is a small fraction of a message: a page always holds one.
    biggest = spec(
        consumer="/" + "a" * 60,
        name="n" * bounds.MAX_JOB_NAME,
        command=["x" * (bounds.MAX_ARGV_BYTES // 2)] * 2,
        env={"A": "v" * bounds.MAX_ENV_VALUE, "B": "v" * (bounds.MAX_ENV_VALUE - 2)},
        working_dir="/" + "d" * (bounds.MAX_PATH - 1),
    )
    assert bounds.check_job_spec(biggest) is None
    assert biggest.ByteSize() < bounds.MAX_PAGE_BYTES // 16


def test_refusals_are_frozen_values() -> None:
    r = Refusal("a", "a: no")
    assert r == Refusal("a", "a: no") and hash(r) == hash(Refusal("a", "a: no"))
    with pytest.raises(AttributeError):
        r.field = "b"  # type: ignore[misc]


# --- properties: any message in, None or a Refusal out -----------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=40)  # protobuf: no lone surrogates
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
F64 = st.floats(allow_nan=True, allow_infinity=True)
PROPS = settings(max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.too_slow])


def _gpus() -> st.SearchStrategy[jobs_pb2.GpuRequest]:
    return st.builds(jobs_pb2.GpuRequest, min=U32, max=U32)


def _specs() -> st.SearchStrategy[jobs_pb2.JobSpec]:
    return st.builds(
        jobs_pb2.JobSpec,
        consumer=st.one_of(TEXT, st.sampled_from(["/", "/a", "/a/b", "/a/", ""])),
        user=TEXT,
        name=TEXT,
        command=st.lists(TEXT, max_size=5),
        env=st.dictionaries(TEXT, TEXT, max_size=4),
        working_dir=TEXT,
        gpus=_gpus(),
        priority=I32,
    )


def _values() -> st.SearchStrategy[experiments_pb2.ParamValue]:
    return st.one_of(
        st.builds(experiments_pb2.ParamValue),
        st.builds(experiments_pb2.ParamValue, float_value=F64),
        st.builds(experiments_pb2.ParamValue, int_value=I64),
        st.builds(experiments_pb2.ParamValue, string_value=TEXT),
        st.builds(experiments_pb2.ParamValue, bool_value=st.booleans()),
    )


def _params() -> st.SearchStrategy[experiments_pb2.Param]:
    return st.one_of(
        st.builds(experiments_pb2.Param, name=TEXT),
        st.builds(
            experiments_pb2.Param,
            name=TEXT,
            float_range=st.builds(
                experiments_pb2.FloatRange, low=F64, high=F64, log=st.booleans(), step=F64
            ),
        ),
        st.builds(
            experiments_pb2.Param,
            name=TEXT,
            int_range=st.builds(experiments_pb2.IntRange, low=I64, high=I64, step=I64),
        ),
        st.builds(
            experiments_pb2.Param,
            name=TEXT,
            categorical=st.builds(
                experiments_pb2.Categorical, choices=st.lists(_values(), max_size=4)
            ),
        ),
    )


def _experiment_specs() -> st.SearchStrategy[experiments_pb2.ExperimentSpec]:
    return st.builds(
        experiments_pb2.ExperimentSpec,
        name=TEXT,
        consumer=TEXT,
        command=st.lists(TEXT, max_size=4),
        env=st.dictionaries(TEXT, TEXT, max_size=3),
        params=st.lists(_params(), max_size=4),
        metric=TEXT,
        direction=I32.filter(lambda x: x >= 0),
        sampler=I32.filter(lambda x: x >= 0),
        seed=I64,
        pruner=st.builds(
            experiments_pb2.PrunerSpec,
            kind=st.integers(0, 10),
            min_resource=U64,
            max_resource=U64,
            reduction_factor=U32,
            startup_trials=U32,
            warmup_steps=U64,
        ),
        max_trials=U32,
        max_parallel=U32,
        gpus=_gpus(),
        priority=I32,
    )


def _reports() -> st.SearchStrategy[agent_pb2.JobReport]:
    return st.builds(
        agent_pb2.JobReport,
        job_id=U64,
        attempt=U32,
        phase=st.integers(0, 10),
        exit_code=I32,
        message=TEXT,
        time=F64,
        gpu_indices=st.lists(U32, max_size=4),
    )


def _requests() -> st.SearchStrategy[Message]:
    return st.one_of(
        st.builds(jobs_pb2.SubmitJobRequest, spec=_specs()),
        st.builds(
            jobs_pb2.SubmitJobsRequest,
            jobs=st.lists(st.builds(jobs_pb2.SubmitJobRequest, spec=_specs()), max_size=3),
        ),
        st.builds(jobs_pb2.GetJobRequest, id=U64),
        st.builds(jobs_pb2.CancelJobRequest, id=U64, user=TEXT),
        st.builds(
            jobs_pb2.ListJobsRequest,
            consumer=TEXT,
            states=st.lists(st.integers(0, 10), max_size=3),
            user=TEXT,
            limit=U32,
            page_token=st.one_of(TEXT, st.integers(0, 10**25).map(str)),
        ),
        st.builds(jobs_pb2.WatchJobsRequest, consumer=TEXT, ids=st.lists(U64, max_size=5)),
        st.builds(jobs_pb2.StreamLogsRequest, id=U64, offset=U64),
        st.builds(admin_pb2.ApplyPolicyRequest, text=TEXT, source_name=TEXT),
        st.builds(admin_pb2.DrainNodeRequest, node=TEXT, reason=TEXT),
        st.builds(admin_pb2.UndrainNodeRequest, node=TEXT),
        st.builds(admin_pb2.ForgetNodeRequest, node=TEXT),
        st.builds(
            admin_pb2.CreateTokenRequest,
            user=TEXT,
            node=st.booleans(),
            scopes=st.lists(st.one_of(TEXT, st.sampled_from(SCOPES)), max_size=3),
            ttl_seconds=F64,
        ),
        st.builds(admin_pb2.ListAuditRequest, identity=TEXT, before_id=U64, limit=U32),
        st.builds(
            agent_pb2.AgentMessage,
            register=st.builds(
                agent_pb2.Register,
                node=TEXT,
                pool=TEXT,
                gpus=st.lists(
                    st.builds(
                        agent_pb2.GpuInfo, index=U32, uuid=TEXT, model=TEXT, memory_bytes=U64
                    ),
                    max_size=4,
                ),
                hostname=TEXT,
                address=TEXT,
                agent_version=TEXT,
                jobs=st.lists(_reports(), max_size=3),
            ),
        ),
        st.builds(agent_pb2.AgentMessage, report=_reports()),
        st.builds(experiments_pb2.CreateExperimentRequest, spec=_experiment_specs()),
        st.builds(
            experiments_pb2.ReportTrialRequest,
            experiment_id=U64,
            trial=U32,
            job_id=U64,
            step=U64,
            value=F64,
            final=st.booleans(),
        ),
    )


@PROPS
@given(_requests())
def test_random_messages_are_refused_or_accepted_never_raise(msg: Message) -> None:
    got = check_request(msg, SCOPES)
    assert got is None or isinstance(got, Refusal)
    if got is not None and not got.field.startswith("jobs["):
        assert got.message.startswith(f"{got.field}: ")


MESSAGE_TYPES = [
    jobs_pb2.SubmitJobsRequest,
    jobs_pb2.ListJobsRequest,
    jobs_pb2.WatchJobsRequest,
    admin_pb2.CreateTokenRequest,
    agent_pb2.AgentMessage,
    experiments_pb2.CreateExperimentRequest,
    experiments_pb2.ReportTrialRequest,
]


@PROPS
@given(st.sampled_from(MESSAGE_TYPES), st.binary(max_size=200))
def test_any_decodable_bytes_are_refused_or_accepted(kind: Any, data: bytes) -> None:
    try:
        msg = kind.FromString(data)
    except DecodeError:
        return
    got = check_request(msg, SCOPES)
    assert got is None or isinstance(got, Refusal)

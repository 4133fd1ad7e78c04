"""The Experiments service: hyperparameter searches (docs/hpo.md). Thin: the
controller keeps the experiments; this checks requests and converts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from schedulerd.api.v1 import experiments_pb2 as pb
from schedulerd.api.v1 import experiments_pb2_grpc
from schedulerd.auth.authorize import NOTHING, Action, Target
from schedulerd.auth.identity import Credential, Identity
from schedulerd.core import is_within
from schedulerd.daemon.experiments import ExperimentController, NotFound, ReportRefused
from schedulerd.daemon.experiments.convert import experiment_to_pb, trial_state
from schedulerd.daemon.gate import Gate
from schedulerd.daemon.services.errors import abort
from schedulerd.daemon.state import ClusterState
from schedulerd.hpo.codec import spec_from_pb


class ExperimentsService(experiments_pb2_grpc.ExperimentsServicer):
    def __init__(self, state: ClusterState, controller: ExperimentController, gate: Gate) -> None:
        self.state = state
        self.controller = controller
        self.gate = gate

    async def _allowed(
        self, context: grpc.aio.ServicerContext, action: Action, exp_id: int
    ) -> Identity:
        """The caller, allowed `action` on experiment `exp_id` (its owner, or an admin
        over its consumer); NOT_FOUND when there is none."""
        who = await self.gate.who(context, action)
        got = self.controller.get(exp_id)
        if got is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no experiment {exp_id}")
        spec = got[0].spec
        await self.gate.allow(context, who, action, Target(spec.consumer, owner=spec.user))
        return who

    async def CreateExperiment(
        self, request: pb.CreateExperimentRequest, context: grpc.aio.ServicerContext
    ) -> pb.Experiment:
        who = await self.gate.who(context, Action.CREATE_EXPERIMENT)
        target = Target(request.spec.consumer, on_behalf_of=request.spec.user)
        await self.gate.allow(context, who, Action.CREATE_EXPERIMENT, target)
        # Its trials run as this user: the caller, or whom a cluster admin named.
        request.spec.user = request.spec.user or who.name
        spec = spec_from_pb(request.spec)
        found = self.controller.check(spec)
        if found:
            listed = "; ".join(f"spec.{field}: {why}" for field, why in found)
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"experiment refused: {listed}; nothing was created",
            )
        exp = await self.controller.create(spec, vouched=who.credential is Credential.VOUCHED)
        self.gate.audit.note(f"experiment {exp.id}")
        msg = self._pb(exp.id, with_trials=True, intermediate=False)
        assert msg is not None
        return msg

    async def GetExperiment(
        self, request: pb.GetExperimentRequest, context: grpc.aio.ServicerContext
    ) -> pb.Experiment:
        await self._allowed(context, Action.GET_EXPERIMENT, request.id)
        msg = self._pb(request.id, with_trials=True, intermediate=request.include_intermediate)
        if msg is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no experiment {request.id}")
        return msg

    async def ListExperiments(
        self, request: pb.ListExperimentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListExperimentsResponse:
        caller = await self.gate.check(context, Action.LIST_EXPERIMENTS, NOTHING)
        # Only those the caller may see in full: an experiment is its command and env.
        return pb.ListExperimentsResponse(
            experiments=[
                experiment_to_pb(exp, trials, self.state, with_trials=False)
                for exp, trials in self.controller.list()
                if is_within(exp.spec.consumer, request.consumer)
                and self.gate.sees_in_full(caller.who, exp.spec.consumer, exp.spec.user)
            ][-1000:]
        )

    async def StopExperiment(
        self, request: pb.StopExperimentRequest, context: grpc.aio.ServicerContext
    ) -> pb.Experiment:
        who = await self._allowed(context, Action.STOP_EXPERIMENT, request.id)
        self.gate.audit.note(f"experiment {request.id}")
        try:
            await self.controller.stop(request.id, who.label)
        except NotFound as e:
            await abort(context, grpc.StatusCode.NOT_FOUND, str(e))
        msg = self._pb(request.id, with_trials=True, intermediate=False)
        assert msg is not None
        return msg

    async def WatchExperiment(
        self, request: pb.WatchExperimentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Experiment]:
        await self._allowed(context, Action.WATCH_EXPERIMENT, request.id)
        changed = asyncio.Event()

        def watcher(exp_id: int) -> None:
            if exp_id == request.id:
                changed.set()

        self.controller.watchers.append(watcher)
        try:
            while True:
                changed.clear()
                msg = self._pb(request.id, with_trials=True, intermediate=False)
                if msg is None:
                    await abort(context, grpc.StatusCode.NOT_FOUND, f"no experiment {request.id}")
                yield msg
                if msg.state != pb.EXPERIMENT_RUNNING:
                    return
                await changed.wait()
                await asyncio.sleep(0.1)  # coalesce a burst of changes into one update
        finally:
            self.controller.watchers.remove(watcher)

    async def ReportTrial(
        self, request: pb.ReportTrialRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportTrialResponse:
        await self._allowed(context, Action.REPORT_TRIAL, request.experiment_id)
        try:
            stop, _, message = await self.controller.report(
                request.experiment_id,
                request.trial,
                request.job_id,
                request.step,
                request.value,
                request.final,
            )
        except NotFound as e:
            await abort(context, grpc.StatusCode.NOT_FOUND, str(e))
        except ReportRefused as e:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        got = self.controller.get(request.experiment_id)
        assert got is not None
        trial = next(t for t in got[1] if t.number == request.trial)
        return pb.ReportTrialResponse(
            should_stop=stop, state=trial_state(trial, self.state), message=message
        )

    def _pb(self, exp_id: int, with_trials: bool, intermediate: bool) -> pb.Experiment | None:
        got = self.controller.get(exp_id)
        if got is None:
            return None
        exp, trials = got
        if intermediate:
            history = self.controller.store.load_history(exp_id)
            for t in trials:
                t.history = history.get(t.number, [])
        msg = experiment_to_pb(exp, trials, self.state, with_trials)
        for t in trials:
            t.history = []  # live records: keep them small
        return msg

"""The one authorization rule: may this identity do this action to this object?

Pure: it reads the identity, the action, the object and the rules (cluster admins and
the policy's `users:`/`admins:`), nothing else. Every servicer asks it, through the
daemon's gate (schedulerd/daemon/gate.py). docs/security.md has the same table in words.

Roles:
- cluster admin: the daemon's own user, root on the daemon's machine, `--admin NAME`;
  may do everything, to any job, and act as any node from the daemon's machine.
- consumer admin: named by `admins:` on a consumer (or its ancestors); sees, cancels and
  reads the logs of every job in that subtree.
- user: submits where the policy's `users:` allow; sees in full, cancels and reads the
  logs of their own jobs; sees others' jobs without command, env or logs.
- node: its own agent stream, nothing else.
- anonymous: nothing but WhoAmI.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from schedulerd.auth.identity import Credential, Identity, Kind, Scope
from schedulerd.core.model import ConsumerPath, Policy


class Action(enum.Enum):
    # Scheduler
    SUBMIT = "Scheduler.SubmitJob"
    GET_JOB = "Scheduler.GetJob"
    LIST_JOBS = "Scheduler.ListJobs"
    CANCEL_JOB = "Scheduler.CancelJob"
    WATCH_JOBS = "Scheduler.WatchJobs"
    READ_LOGS = "Scheduler.StreamLogs"
    # Admin: reading
    GET_POLICY = "Admin.GetPolicy"
    LIST_CONSUMERS = "Admin.ListConsumers"
    LIST_NODES = "Admin.ListNodes"
    WHOAMI = "Admin.WhoAmI"
    # Admin: changing
    APPLY_POLICY = "Admin.ApplyPolicy"
    DRY_RUN_POLICY = "Admin.ApplyPolicy(dry_run)"
    DRAIN_NODE = "Admin.DrainNode"
    UNDRAIN_NODE = "Admin.UndrainNode"
    FORGET_NODE = "Admin.ForgetNode"
    CREATE_TOKEN = "Admin.CreateToken"
    LIST_TOKENS = "Admin.ListTokens"
    REVOKE_TOKEN = "Admin.RevokeToken"
    LIST_AUDIT = "Admin.ListAudit"
    # Agents
    CONNECT_NODE = "AgentService.Connect"
    # Experiments
    CREATE_EXPERIMENT = "Experiments.CreateExperiment"
    GET_EXPERIMENT = "Experiments.GetExperiment"
    LIST_EXPERIMENTS = "Experiments.ListExperiments"
    STOP_EXPERIMENT = "Experiments.StopExperiment"
    WATCH_EXPERIMENT = "Experiments.WatchExperiment"
    REPORT_TRIAL = "Experiments.ReportTrial"
    # Inference services
    CREATE_SERVICE = "Services.CreateService"
    GET_SERVICE = "Services.GetService"
    LIST_SERVICES = "Services.ListServices"
    UPDATE_SERVICE = "Services.UpdateService"
    # An update that changes what the replicas run (command, env, working dir): they run
    # as the service's user, so only that user or a cluster admin may.
    CHANGE_SERVICE_COMMAND = "Services.UpdateService(command)"
    DELETE_SERVICE = "Services.DeleteService"
    WATCH_SERVICE = "Services.WatchService"
    # The router's own calls, and a request to a service through it
    WATCH_ROUTES = "Routing.WatchRoutes"
    REPORT_LOAD = "Routing.ReportLoad"
    CHECK_ACCESS = "Routing.CheckAccess"
    INVOKE_SERVICE = "Router.Invoke"


class Denial(enum.Enum):
    UNAUTHENTICATED = "unauthenticated"  # no (valid) credential: UNAUTHENTICATED
    FORBIDDEN = "forbidden"  # known, but not allowed: PERMISSION_DENIED


@dataclass(frozen=True)
class Target:
    """What an action is done to. `owner` is the user of a job or experiment;
    `on_behalf_of` a user named in a submission; `node` a node name (a stream's, or
    the token's subject); `user` a token's user."""

    consumer: str = ""
    owner: str = ""
    node: str = ""
    on_behalf_of: str = ""
    user: str = ""

    def describe(self) -> str:
        parts = [
            f"{k} {v}"
            for k, v in (
                ("consumer", self.consumer),
                ("owner", self.owner),
                ("node", self.node),
                ("for", self.on_behalf_of),
                ("user", self.user),
            )
            if v
        ]
        return ", ".join(parts)


NOTHING = Target()


@dataclass(frozen=True)
class Rules:
    cluster_admins: frozenset[str]
    policy: Policy


@dataclass(frozen=True)
class Decision:
    allowed: bool
    denial: Denial | None = None
    reason: str = ""
    # For reads of a job or experiment: False when the caller may see it only without
    # its command, env and logs (another user's job).
    full: bool = True


_READS = frozenset(
    {
        Action.GET_JOB,
        Action.LIST_JOBS,
        Action.WATCH_JOBS,
        Action.READ_LOGS,
        Action.GET_POLICY,
        Action.LIST_CONSUMERS,
        Action.LIST_NODES,
        Action.GET_EXPERIMENT,
        Action.LIST_EXPERIMENTS,
        Action.WATCH_EXPERIMENT,
        Action.GET_SERVICE,
        Action.LIST_SERVICES,
        Action.WATCH_SERVICE,
    }
)
_ROUTER = frozenset({Action.WATCH_ROUTES, Action.REPORT_LOAD, Action.CHECK_ACCESS})
_CLUSTER_ADMIN_ONLY = frozenset(
    {
        Action.APPLY_POLICY,
        Action.DRY_RUN_POLICY,
        Action.DRAIN_NODE,
        Action.UNDRAIN_NODE,
        Action.FORGET_NODE,
        Action.LIST_AUDIT,
    }
)
# Actions on one job or experiment: its owner, the admins of its consumer, cluster admins.
_OWNER_OR_ADMIN = frozenset(
    {
        Action.CANCEL_JOB,
        Action.READ_LOGS,
        Action.STOP_EXPERIMENT,
        Action.REPORT_TRIAL,
        Action.GET_EXPERIMENT,
        Action.WATCH_EXPERIMENT,
        Action.UPDATE_SERVICE,
        Action.DELETE_SERVICE,
    }
)


def is_cluster_admin(who: Identity, rules: Rules) -> bool:
    if who.kind is not Kind.USER or who.credential is Credential.VOUCHED:
        return False  # root on one node must not own the cluster (auth/vouch.py)
    # Root on the daemon's own machine can read its store and signing key anyway.
    return who.name in rules.cluster_admins or (who.local and who.uid == 0)


def admin_of(who: Identity, consumer: str, rules: Rules) -> bool:
    """Cluster admin, or a consumer admin of `consumer`'s subtree."""
    if is_cluster_admin(who, rules):
        return True
    if who.kind is not Kind.USER or not consumer:
        return False
    path = ConsumerPath(consumer)
    return path in rules.policy.consumers and who.name in rules.policy.admins_of(path)


def authorize(who: Identity, action: Action, target: Target, rules: Rules) -> Decision:
    """The rule. Scopes narrow a token to part of its holder's rights."""
    if action is Action.WHOAMI:
        return _yes()
    if who.kind is Kind.ANONYMOUS:
        return _no(Denial.UNAUTHENTICATED, "a credential is required (a token, or a local uid)")
    if action is Action.CONNECT_NODE:
        return _connect_node(who, target, rules)
    if who.kind is Kind.NODE:
        return _no(Denial.FORBIDDEN, f"node {who.name}'s credential serves its agent stream only")
    if action in _CLUSTER_ADMIN_ONLY:
        if not is_cluster_admin(who, rules):
            return _no(Denial.FORBIDDEN, f"{action.value} is for cluster admins")
        return _scoped(who, Scope.ADMIN, action)
    if action in (Action.CREATE_TOKEN, Action.LIST_TOKENS, Action.REVOKE_TOKEN):
        return _tokens(who, action, target, rules)
    if action is Action.SUBMIT:
        return _submit(who, target, rules, Scope.SUBMIT)
    if action is Action.CREATE_EXPERIMENT:
        return _submit(who, target, rules, Scope.EXPERIMENTS)
    if action is Action.CREATE_SERVICE:
        return _submit(who, target, rules, Scope.SERVICES)
    if action in _ROUTER:
        # The router sees every service's replicas and speaks for every caller's load:
        # a cluster admin's credential, narrowed to this by the "router" scope.
        if not is_cluster_admin(who, rules):
            return _no(Denial.FORBIDDEN, f"{action.value} is for the router (a cluster admin)")
        return _scoped(who, Scope.ROUTER, action)
    if action is Action.INVOKE_SERVICE:
        return _invoke(who, target, rules)
    if action is Action.CHANGE_SERVICE_COMMAND:
        return _run_as_owner(who, target, rules)
    if action in _OWNER_OR_ADMIN:
        return _owner_or_admin(who, action, target, rules)
    if action in _READS:
        scoped = _scoped(who, Scope.READ, action)
        if not scoped.allowed:
            return scoped
        full = who.name == target.owner or admin_of(who, target.consumer, rules)
        return Decision(True, full=full or not target.owner)
    return _no(Denial.FORBIDDEN, f"{action.value}: no rule allows it")  # new actions: closed


def _connect_node(who: Identity, target: Target, rules: Rules) -> Decision:
    if who.kind is Kind.NODE:
        if who.name != target.node:
            return _no(
                Denial.FORBIDDEN,
                f"this credential is node {who.name}'s; it may not connect as node {target.node}",
            )
        return _yes()
    # An agent on the daemon's own machine, run by a cluster admin (the local agent
    # of a one-machine setup): the kernel vouches for its uid, no certificate needed.
    if who.local and who.credential is Credential.LOCAL_UID and is_cluster_admin(who, rules):
        return _yes()
    return _no(Denial.FORBIDDEN, "agents connect with their node's certificate or node token")


def _submit(who: Identity, target: Target, rules: Rules, scope: Scope) -> Decision:
    action = {Scope.EXPERIMENTS: Action.CREATE_EXPERIMENT, Scope.SERVICES: Action.CREATE_SERVICE}
    scoped = _scoped(who, scope, action.get(scope, Action.SUBMIT))
    if not scoped.allowed and scope is Scope.EXPERIMENTS:
        scoped = _scoped(who, Scope.SUBMIT, Action.CREATE_EXPERIMENT)
    if not scoped.allowed:
        return scoped
    user = who.name
    if target.on_behalf_of and target.on_behalf_of != who.name:
        if not is_cluster_admin(who, rules) or not who.allows(Scope.ADMIN):
            return _no(
                Denial.FORBIDDEN,
                f"only cluster admins submit for another user ({target.on_behalf_of})",
            )
        user = target.on_behalf_of
    path = ConsumerPath(target.consumer)
    if path not in rules.policy.consumers:
        return _yes()  # the submission check says it does not exist (INVALID_ARGUMENT)
    # SEMANTICS: only users the policy allows submit to a consumer; cluster admins too
    # (they may change the policy, which is then audited).
    if not rules.policy.may_submit(path, user):
        allowed = rules.policy.allowed_users(path)
        return _no(
            Denial.FORBIDDEN,
            f"user {user!r} may not submit to {target.consumer} "
            f"(allowed: {', '.join(sorted(allowed))})",
        )
    return _yes()


def _run_as_owner(who: Identity, target: Target, rules: Rules) -> Decision:
    """What runs as a user is that user's to say, or a cluster admin's (as submitting
    for another user): a consumer admin may scale or delete a service, not make its
    replicas run another command as its owner."""
    if who.name == target.owner and who.allows(Scope.SERVICES):
        return _yes()
    if is_cluster_admin(who, rules) and who.allows(Scope.ADMIN):
        return _yes()
    if who.name == target.owner:
        return _scoped(who, Scope.SERVICES, Action.CHANGE_SERVICE_COMMAND)
    return _no(
        Denial.FORBIDDEN,
        f"the replicas run as {target.owner}: only {target.owner} or a cluster admin may "
        "change their command, env or working dir",
    )


def _invoke(who: Identity, target: Target, rules: Rules) -> Decision:
    """A request to a non-public service: its consumer's users (those who may submit
    there), its admins, cluster admins; a token needs the "invoke" scope."""
    scoped = _scoped(who, Scope.INVOKE, Action.INVOKE_SERVICE)
    if not scoped.allowed:
        return scoped
    path = ConsumerPath(target.consumer)
    if admin_of(who, target.consumer, rules):
        return _yes()
    if path in rules.policy.consumers and rules.policy.may_submit(path, who.name):
        return _yes()
    return _no(
        Denial.FORBIDDEN,
        f"user {who.name!r} may not use services of {target.consumer} "
        "(its users, its admins and cluster admins may)",
    )


def _owner_or_admin(who: Identity, action: Action, target: Target, rules: Rules) -> Decision:
    own = who.name == target.owner
    scope = {
        Action.CANCEL_JOB: Scope.SUBMIT,
        Action.STOP_EXPERIMENT: Scope.EXPERIMENTS,
        Action.REPORT_TRIAL: Scope.EXPERIMENTS,
        Action.UPDATE_SERVICE: Scope.SERVICES,
        Action.DELETE_SERVICE: Scope.SERVICES,
    }.get(action, Scope.READ)
    if own and who.allows(scope):
        return _yes()
    if admin_of(who, target.consumer, rules) and who.allows(Scope.ADMIN):
        return _yes()
    if own:
        return _scoped(who, scope, action)
    what = f"job or experiment of {target.owner}" if target.owner else "this object"
    return _no(
        Denial.FORBIDDEN,
        f"{action.value}: the {what} in {target.consumer or '?'} is neither yours "
        "nor in a consumer you administer",
    )


def _tokens(who: Identity, action: Action, target: Target, rules: Rules) -> Decision:
    if is_cluster_admin(who, rules):
        return _scoped(who, Scope.ADMIN, action)
    if target.node or (target.user and target.user != who.name):
        return _no(Denial.FORBIDDEN, "only cluster admins manage node tokens or others' tokens")
    # Only a login on the daemon's own machine mints tokens: a stolen token must not
    # outlive its expiry or revocation, and a node's word for a user must not outlive
    # that node's session (a node's root could otherwise mint a year of "root").
    if action is Action.CREATE_TOKEN and who.credential is not Credential.LOCAL_UID:
        return _no(
            Denial.FORBIDDEN,
            "tokens are made from a login on the daemon's machine, or by a cluster admin",
        )
    # A scoped token manages tokens only with the admin scope (a CI token that reads
    # must not revoke its holder's other tokens).
    return _scoped(who, Scope.ADMIN, action)


def _scoped(who: Identity, scope: Scope, action: Action) -> Decision:
    if who.allows(scope):
        return _yes()
    have = ", ".join(sorted(s.value for s in who.scopes or ())) or "none"
    return _no(
        Denial.FORBIDDEN, f"{action.value} needs a token with scope {scope.value!r} (has: {have})"
    )


def _yes() -> Decision:
    return Decision(True)


def _no(denial: Denial, reason: str) -> Decision:
    return Decision(False, denial, reason)

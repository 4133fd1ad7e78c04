"""Numbered migrations. Each runs once, in order, inside one transaction; the
applied number is kept in `PRAGMA user_version`."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- also the queue order
        consumer TEXT NOT NULL,
        user TEXT NOT NULL,
        name TEXT NOT NULL,
        command TEXT NOT NULL,                 -- JSON argv
        env TEXT NOT NULL,                     -- JSON object
        working_dir TEXT NOT NULL,
        gpus_min INTEGER NOT NULL,
        gpus_max INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        state TEXT NOT NULL,
        submit_time REAL NOT NULL,
        start_time REAL,
        end_time REAL,
        exit_code INTEGER,
        reason TEXT NOT NULL DEFAULT '',
        attempt INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_by_state ON jobs(state);
    CREATE TABLE job_parts (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        attempt INTEGER NOT NULL,
        node TEXT NOT NULL,
        node_rank INTEGER NOT NULL,
        gpu_indices TEXT NOT NULL,             -- JSON list
        gpu_uuids TEXT NOT NULL,               -- JSON list
        phase TEXT NOT NULL,
        exit_code INTEGER,
        pid INTEGER,
        message TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (job_id, attempt, node)
    );
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        pool TEXT NOT NULL,
        gpus TEXT NOT NULL,                    -- JSON list of {index, uuid, model, memory_bytes}
        drained INTEGER NOT NULL DEFAULT 0,
        drain_reason TEXT NOT NULL DEFAULT '',
        last_seen REAL NOT NULL DEFAULT 0,
        fake_gpus INTEGER NOT NULL DEFAULT 0,
        agent_version TEXT NOT NULL DEFAULT '',
        down INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE policies (
        version INTEGER PRIMARY KEY AUTOINCREMENT,
        text TEXT NOT NULL,
        source TEXT NOT NULL,
        applied_at REAL NOT NULL
    );
    CREATE TABLE events (                      -- append-only decision log
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        job_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX events_by_job ON events(job_id);
    """,
    # 2: reclaim and elastic jobs.
    """
    ALTER TABLE jobs ADD COLUMN preempting INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN release_deadline REAL;
    ALTER TABLE jobs ADD COLUMN store_address TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN next_worker_id INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE job_parts ADD COLUMN workers TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE job_parts ADD COLUMN releasing TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE nodes ADD COLUMN address TEXT NOT NULL DEFAULT '';
    """,
    # 3: hyperparameter search (docs/hpo.md). Optuna keeps its own database beside
    # this one; these tables are the daemon's word on which job is which trial and
    # what each reported, so a restart can set Optuna right.
    """
    CREATE TABLE experiments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        consumer TEXT NOT NULL,
        user TEXT NOT NULL,
        spec TEXT NOT NULL,                    -- JSON ExperimentSpec
        state TEXT NOT NULL,                   -- RUNNING, DONE, STOPPED
        reason TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        ended REAL
    );
    CREATE TABLE trials (
        experiment_id INTEGER NOT NULL REFERENCES experiments(id),
        number INTEGER NOT NULL,               -- Optuna's trial number
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        state TEXT NOT NULL,                   -- ACTIVE, COMPLETE, PRUNED, FAILED, STOPPED
        params TEXT NOT NULL,                  -- JSON object
        value REAL,
        last_step INTEGER,
        last_value REAL,
        reason TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        ended REAL,
        PRIMARY KEY (experiment_id, number)
    );
    CREATE INDEX trials_by_job ON trials(job_id);
    CREATE TABLE trial_values (                -- every intermediate report
        experiment_id INTEGER NOT NULL,
        number INTEGER NOT NULL,
        step INTEGER NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (experiment_id, number, step)
    );
    """,
    # 4: no GPU held twice (docs/fencing.md). A node's session epoch, bumped at every
    # Register; the GPUs fenced on it (parts that may still run although the scheduler
    # moved on); and elastic jobs whose training has ended (never grown again).
    """
    ALTER TABLE nodes ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE nodes ADD COLUMN fences TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE jobs ADD COLUMN ending INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN requeue_cause TEXT NOT NULL DEFAULT '';
    """,
    # 5: who may do what (docs/security.md). Every token the daemon signed (its secret is
    # never kept: only its id, which is what revocation names), and the audit trail.
    """
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,                 -- a user name, or a node name
        node INTEGER NOT NULL DEFAULT 0,
        scopes TEXT,                           -- JSON list, NULL: unrestricted
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        revoked_at REAL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        identity TEXT NOT NULL,
        credential TEXT NOT NULL,
        action TEXT NOT NULL,
        object TEXT NOT NULL,
        result TEXT NOT NULL,                  -- ok, or the refusal's status code
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_by_identity ON audit(identity, id);
    """,
    # 6: jobs and experiments submitted with a node-vouched credential never run as root.
    """
    ALTER TABLE jobs ADD COLUMN vouched INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE experiments ADD COLUMN vouched INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: inference services (docs/serve.md). A service's replicas are jobs; these rows
    # say which job is which replica of which service, the port it serves on, whether
    # it is being drained, and the service's history of decisions.
    """
    CREATE TABLE services (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        consumer TEXT NOT NULL,
        user TEXT NOT NULL,
        spec TEXT NOT NULL,                    -- JSON ServiceSpec
        state TEXT NOT NULL,                   -- ACTIVE, DELETING, DELETED
        generation INTEGER NOT NULL DEFAULT 1, -- bumped by an update that needs new replicas
        desired INTEGER NOT NULL,              -- the autoscaler's last word
        reason TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        ended REAL,
        vouched INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX services_live_name ON services(name) WHERE state != 'DELETED';
    CREATE TABLE replicas (
        service_id INTEGER NOT NULL REFERENCES services(id),
        number INTEGER NOT NULL,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        generation INTEGER NOT NULL,
        port INTEGER NOT NULL,
        phase TEXT NOT NULL,                   -- ACTIVE, DRAINING, STOPPING, ENDED
        reason TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        drain_started REAL,
        ended REAL,
        PRIMARY KEY (service_id, number)
    );
    CREATE INDEX replicas_by_job ON replicas(job_id);
    CREATE TABLE service_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        service_id INTEGER NOT NULL,
        time REAL NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        from_replicas INTEGER NOT NULL DEFAULT 0,
        to_replicas INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX service_events_by_service ON service_events(service_id, id);
    """,
    # 8: bounded disruption and reservations (docs/scheduling.md): how often each job
    # was preempted, and the time limit it declared (`--time`, NULL: none); decayed
    # usage, kept so that a restart does not reset the fairshare order.
    """
    ALTER TABLE jobs ADD COLUMN preemptions INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN time_limit_s REAL;
    CREATE TABLE usage (                       -- decayed GPU-seconds (core/usage.py)
        consumer TEXT NOT NULL,
        user TEXT NOT NULL,
        gpu_seconds REAL NOT NULL,
        at REAL NOT NULL,                      -- when it was this much
        PRIMARY KEY (consumer, user)
    );
    """,
    # 9: pools (docs/pools.md): the pool or GPU type a job asked for ('': any); why
    # the daemon stopped a job for good ('timeout': its time limit ran out); when it last
    # began to wait (reclaim_patience).
    """
    ALTER TABLE jobs ADD COLUMN pool TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN stop_cause TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN queued_at REAL;
    """,
    # 10: job arrays (docs/arrays.md): each element is a job; array_id is the job id of
    # the array's first element (0: not an array's), array_index its index.
    """
    ALTER TABLE jobs ADD COLUMN array_id INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN array_index INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_by_array ON jobs(array_id, array_index) WHERE array_id != 0;
    """,
    # 11: a part is keyed by its rank too (docs/store-writes.md): an elastic job may hold,
    # on one node in one attempt, a part lost with the node and the part it grew there
    # when the node came back; keyed by (job, attempt, node), only the newer could be
    # stored and a restart forgot the lost one. SQLite cannot change a primary key in
    # place: the table is copied.
    """
    CREATE TABLE job_parts_by_rank (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        attempt INTEGER NOT NULL,
        node TEXT NOT NULL,
        node_rank INTEGER NOT NULL,
        gpu_indices TEXT NOT NULL,
        gpu_uuids TEXT NOT NULL,
        phase TEXT NOT NULL,
        exit_code INTEGER,
        pid INTEGER,
        message TEXT NOT NULL DEFAULT '',
        workers TEXT NOT NULL DEFAULT '{}',
        releasing TEXT NOT NULL DEFAULT '[]',
        PRIMARY KEY (job_id, attempt, node, node_rank)
    );
    INSERT INTO job_parts_by_rank (job_id, attempt, node, node_rank, gpu_indices, gpu_uuids,
        phase, exit_code, pid, message, workers, releasing)
    SELECT job_id, attempt, node, node_rank, gpu_indices, gpu_uuids, phase, exit_code, pid,
        message, workers, releasing FROM job_parts;
    DROP TABLE job_parts;
    ALTER TABLE job_parts_by_rank RENAME TO job_parts;
    """,
]

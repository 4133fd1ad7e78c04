"""The web dashboard (docs/dashboard.md) in a real headless browser: Debian's Chromium,
driven by Selenium through Debian's chromedriver, against a real daemon with an agent
and two teams' users (throwaway Unix users: their jobs run as them).

Logged in with a cluster admin's token, the consumer tree, a waiting job's reason, the
node's GPU grid and a job page render with live data, and a job's page follows it from
waiting to running without a reload. An unauthenticated visit is refused (the login
page, and 401 from the JSON); another team's user sees none of the first team's jobs;
a job's owner reads its log's tail. Screenshots of every page are kept in
$SCHEDULERD_TEST_ARTIFACTS (default: test-artifacts/dashboard/ under the repository).

Without Chromium on this machine the test is skipped with how to install it, unless
SCHEDULERD_REQUIRE_BROWSER=1 (as .ci/run sets): then it fails."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Cluster, free_port, remove_agent_cgroups, wait_for
from unix_users import throwaway_user

CHROMIUM = os.environ.get("SCHEDULERD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SCHEDULERD_CHROMEDRIVER", "/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("SCHEDULERD_TEST_ARTIFACTS") or REPO / "test-artifacts/dashboard")
WAIT_S = 20.0


def _browser_missing() -> str:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if not missing:
        return ""
    return (
        f"{' and '.join(missing)} not found: install Debian's Chromium "
        "(apt-get install chromium chromium-driver; .ci/run does) to run the browser test"
    )


if _browser_missing() and os.environ.get("SCHEDULERD_REQUIRE_BROWSER") != "1":
    pytest.skip(_browser_missing(), allow_module_level=True)

from selenium import webdriver  # noqa: E402 - after the skip: a dev dependency
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

POLICY = """
version: 1
users: "*"
consumers:
  vision:
    owned: 2
    limit: 2
    users: [{vision}]
  nlp:
    owned: 2
    users: [{nlp}]
"""


def _browser() -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_argument("--disable-dev-shm-usage")
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@contextlib.contextmanager
def _world(tmp_path: Path) -> Iterator[tuple[Cluster, str, str, str]]:
    with contextlib.ExitStack() as stack:
        vision = stack.enter_context(throwaway_user("sdv")).pw_name
        nlp = stack.enter_context(throwaway_user("sdn")).pw_name
        # (The users' processes are gone before userdel: the cluster stops first.)
        http = free_port()
        cluster = Cluster(
            tmp_path,
            POLICY.format(vision=vision, nlp=nlp),
            daemon_args=("--http-listen", f"127.0.0.1:{http}", "--admin", "ops"),
        )
        node = f"ui-{os.getpid()}"
        stack.callback(remove_agent_cgroups, node)
        stack.callback(cluster.stop)
        cluster.start_daemon()
        cluster.start_agent(node, 4)
        cluster.wait_nodes_up(1)
        yield cluster, f"http://127.0.0.1:{http}", vision, nlp


def _state(cluster: Cluster, job_id: int) -> str:
    from schedulerd.api.v1 import jobs_pb2

    return str(jobs_pb2.JobState.Name(cluster.client.get_job(job_id).state))


def test_dashboard_in_a_browser(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with _world(tmp_path) as (cluster, base, vision, nlp), contextlib.closing(_browser()) as b:
        c = cluster.client
        ops = c.create_token("ops", 3600).secret  # a cluster admin (--admin ops)
        vision_token = c.create_token(vision, 3600, ["read"]).secret
        nlp_token = c.create_token(nlp, 3600, ["read"]).secret
        sleeper = ["/bin/sh", "-c", "echo hello from $SCHEDULERD_JOB_ID; exec sleep 600"]

        def submit(consumer: str, user: str, gpus: int, name: str) -> int:
            home = pwd.getpwnam(user).pw_dir  # a working dir the user may use
            job = c.submit(consumer, sleeper, gpus=gpus, user=user, name=name, working_dir=home)
            return int(job.id)

        first = submit("/vision", vision, 2, "first")
        theirs = submit("/nlp", nlp, 1, "theirs")
        wait_for(
            "both running", lambda: {_state(cluster, first), _state(cluster, theirs)} == {"RUNNING"}
        )
        # /vision is at its limit of 2 GPUs: this one waits, and says why.
        second = submit("/vision", vision, 2, "second")
        reason = wait_for(
            "the reason it waits", lambda: r if "limit" in (r := c.get_job(second).reason) else ""
        )
        wait = WebDriverWait(b, WAIT_S, poll_frequency=0.1)

        def shot(name: str) -> None:
            b.save_screenshot(str(ARTIFACTS / f"{name}.png"))

        def text(css: str) -> str:
            return str(b.find_element(By.CSS_SELECTOR, css).text)

        def present(css: str) -> bool:
            return bool(b.find_elements(By.CSS_SELECTOR, css))

        def log_in(token: str) -> None:
            b.get(f"{base}/ui/login")
            b.find_element(By.ID, "token").send_keys(token)
            b.find_element(By.ID, "submit").click()
            wait.until(lambda _: b.execute_script("return document.body.dataset.loaded"))

        def log_out() -> None:
            b.find_element(By.CSS_SELECTOR, "header form button").click()
            wait.until(lambda _: "/ui/login" in b.current_url)

        # Unauthenticated: the login page, no data; the JSON answers 401.
        b.get(f"{base}/ui/")
        wait.until(lambda _: "/ui/login" in b.current_url)
        assert present("#token") and not present("#consumers")
        assert "/vision" not in b.page_source
        shot("0-unauthenticated")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/ui/api/overview", timeout=10)
        assert refused.value.code == 401

        # A cluster admin: the consumer tree, the waiting job's reason, the running jobs.
        log_in(ops)
        assert "ops (cluster admin)" in text("#me")
        wait.until(lambda _: present(f'#waiting tr[data-job-id="{second}"]'))
        assert present('#consumers tr[data-path="/vision"]')
        assert present('#consumers tr[data-path="/nlp"]')
        vision_row = text('#consumers tr[data-path="/vision"]')
        assert vision_row.split()[:2] == ["vision", "2"], vision_row  # name, owned
        assert text(f'#waiting tr[data-job-id="{second}"] .reason') == reason
        assert present(f'#running tr[data-job-id="{first}"]')
        assert present(f'#running tr[data-job-id="{theirs}"]')
        assert present("svg#chart path.allocation-line")
        shot("1-overview-admin")

        # The GPU grid: one cell per GPU, the held ones naming their jobs.
        node = f"ui-{os.getpid()}"

        def gpu_cells() -> list[Any]:
            return list(b.find_elements(By.CSS_SELECTOR, f'.gpu[data-node="{node}"]'))

        b.get(f"{base}/ui/nodes")
        wait.until(
            lambda _: len(b.find_elements(By.CSS_SELECTOR, f'.gpu[data-node="{node}"]')) == 4
        )
        held = {e.get_attribute("data-index"): e.get_attribute("data-job-id") for e in gpu_cells()}
        assert sorted(v for v in held.values() if v) == sorted(
            [str(first), str(first), str(theirs)]
        ), held
        shot("2-nodes-admin")

        # The waiting job's page, live: it starts once the first job ends, no reload.
        b.get(f"{base}/ui/jobs/{second}")
        wait.until(lambda _: text("#job-state") == "PENDING")
        assert text("#job-reason") == reason
        shot("3-job-waiting")
        b.execute_script("window.notReloaded = true")
        c.cancel(first)
        wait.until(lambda _: text("#job-state") == "RUNNING")
        assert b.execute_script("return window.notReloaded") is True
        assert node in text("#job-where")
        wait.until(lambda _: present("#history"))
        assert "started" in text("#history")
        shot("4-job-running")
        for page in ("experiments", "services"):
            b.get(f"{base}/ui/{page}")
            wait.until(lambda _, css=f"#{page}": present(css))
            shot(f"5-{page}")
        log_out()

        # Another team's user: their own job, none of /vision's, not even by its id.
        log_in(nlp_token)
        wait.until(lambda _: present(f'#running tr[data-job-id="{theirs}"]'))
        assert not present('#consumers tr[data-path="/vision"]')
        for job_id in (first, second):
            assert not present(f'tr[data-job-id="{job_id}"]')
        assert vision not in b.page_source
        shot("6-overview-other-team")
        b.get(f"{base}/ui/nodes")
        wait.until(
            lambda _: len(b.find_elements(By.CSS_SELECTOR, f'.gpu[data-node="{node}"]')) == 4
        )
        jobs_shown = {
            e.get_attribute("data-job-id")
            for e in b.find_elements(By.CSS_SELECTOR, ".gpu[data-job-id]")
        }
        assert jobs_shown == {str(theirs)}
        assert len(b.find_elements(By.CSS_SELECTOR, ".gpu.busy.other")) == 2  # second's
        shot("7-nodes-other-team")
        b.get(f"{base}/ui/jobs/{second}")
        wait.until(lambda _: present("#not-found"))
        assert vision not in b.page_source
        shot("8-job-of-another-team")
        log_out()

        # The owner: their job's page with its log's tail.
        log_in(vision_token)
        b.get(f"{base}/ui/jobs/{second}")
        wait.until(lambda _: present(".log-text") and f"hello from {second}" in text(".log-text"))
        shot("9-job-log-owner")
        # The JSON with the owner's token, as a script would read it.
        req = urllib.request.Request(
            f"{base}/ui/api/overview", headers={"Authorization": f"Bearer {vision_token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            data = json.load(r)
        assert {j["id"] for j in data["running"]} == {second}
        assert all(j["spec"]["user"] != nlp for j in data["running"] + data["waiting"])

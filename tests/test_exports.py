"""Encoura exports: the client, the listing trap, and the daemon against the simulator."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scorefetch.config import HooksConfig, MetricsConfig
from scorefetch.core.errors import ConfigError, VendorError
from scorefetch.core.http import build_session
from scorefetch.core.ledger import Ledger
from scorefetch.encoura.client import Encoura, choose_organization, strip_token
from scorefetch.encoura.poller import EncouraDeliveries, locate, recover
from scorefetch.observers.hooks import Hooks
from scorefetch.observers.journey import journeys
from scorefetch.observers.metrics import Metrics
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess, write_config
from scorefetch.sandbox.encoura import EncouraSimulator
from tests.standins.hostile import HostileEncoura
from tests.support import LogLines, assert_no_secrets, encoura_config, files_under, wait_until

ORG = {"uid": "org-1", "name": "Sandbox University"}


@pytest.fixture
def enc_sim() -> Iterator[HostileEncoura]:
    with HostileEncoura() as sim:
        yield sim


def exports(sim: EncouraSimulator, tmp_path: Path, **overrides: Any) -> EncouraDeliveries:
    defaults = {"product_keys": ["score-reporter", "prospect"], "retry_schedule": [0.2, 0.2]}
    config = encoura_config(sim, **(defaults | overrides))
    return EncouraDeliveries(
        Encoura(config, build_session()), Ledger(tmp_path / "l.sqlite3"), tmp_path / "files"
    )


def landed(tmp_path: Path) -> dict[str, bytes]:
    """Every file under the Encoura folder, by product-key/name."""
    return files_under(tmp_path / "files" / "encoura")


def test_token_quotes_are_stripped() -> None:
    """A session token wrapped in extra quotes is used bare."""
    assert strip_token('"eyJ.a.b"') == "eyJ.a.b"
    assert strip_token(" eyJ.a.b ") == "eyJ.a.b"


def test_organization_choice() -> None:
    """The only organization is chosen; several without a configured one is a config error
    that lists them; a configured uid must be one of the account's."""
    assert choose_organization(None, [ORG]) == "org-1"
    other = {"uid": "org-2", "name": "Other College"}
    with pytest.raises(ConfigError, match="org-1 \\(Sandbox University\\), org-2"):
        choose_organization(None, [ORG, other])
    assert choose_organization("org-2", [ORG, other]) == "org-2"
    with pytest.raises(ConfigError, match="not one of"):
        choose_organization("org-9", [ORG])


def test_poll_remembers_then_lands_each_export_once(
    enc_sim: EncouraSimulator, tmp_path: Path
) -> None:
    """Exports across product keys land in encoura/<productKey>/<name>; listed uids are in the
    ledger; no API header reaches a download URL and no URL is used twice."""
    a = enc_sim.add_export("score-reporter", "SANDBOX-UNIVERSITY-11212026-1.csv", b"a,b\r\n1,2\r\n")
    b = enc_sim.add_export("prospect", "SANDBOX-UNIVERSITY-11212026-2.csv", b"p\r\n")
    enc_sim.add_export("inquiry", "not-configured.csv", b"x")
    deliveries = exports(enc_sim, tmp_path)
    assert sorted(deliveries.poll()) == sorted([a, b])
    assert deliveries.wait_idle(30)
    assert deliveries.poll() == []  # listed once: Delivered at the vendor now
    deliveries.close(5)
    assert landed(tmp_path) == {
        "score-reporter/SANDBOX-UNIVERSITY-11212026-1.csv": b"a,b\r\n1,2\r\n",
        "prospect/SANDBOX-UNIVERSITY-11212026-2.csv": b"p\r\n",
    }
    stats = enc_sim.stats
    assert stats.api_headers_on_download == 0 and stats.reused_url_rejections == 0
    assert enc_sim.export(a)["status"] == "Delivered"


def test_failed_download_is_redone_with_a_fresh_url(
    enc_sim: EncouraSimulator, tmp_path: Path
) -> None:
    """A 5xx from the bucket and from the URL endpoint: retried with a new one-time URL."""
    uid = enc_sim.add_export("score-reporter", "s.csv", b"scores\r\n")
    enc_sim.inject("download", 503)
    enc_sim.inject("download_url", 500)
    deliveries = exports(enc_sim, tmp_path)
    deliveries.poll()

    def landed_row() -> bool:
        row = deliveries.ledger.get("encoura", uid)
        return row is not None and row.state == "downloaded"

    wait_until(landed_row, timeout=60)
    deliveries.close(5)
    assert landed(tmp_path) == {"score-reporter/s.csv": b"scores\r\n"}
    assert enc_sim.stats.download_url_calls == 3


def test_expired_session_logs_in_again(enc_sim: EncouraSimulator, tmp_path: Path) -> None:
    """A 401 mid-session (token expired at the vendor) means one fresh login, then success."""
    deliveries = exports(enc_sim, tmp_path)
    deliveries.client.login()
    enc_sim.expire_tokens()
    uid = enc_sim.add_export("score-reporter", "t.csv", b"t")
    assert deliveries.poll() == [uid]
    assert deliveries.wait_idle(30)
    deliveries.close(5)
    assert enc_sim.stats.login_calls == 2
    assert landed(tmp_path) == {"score-reporter/t.csv": b"t"}


def test_wrong_api_key_is_a_clear_auth_error(enc_sim: EncouraSimulator, tmp_path: Path) -> None:
    """A refused API key fails the listing as `auth` after a single login attempt."""
    deliveries = exports(enc_sim, tmp_path, api_key="wrong-key-123")
    with pytest.raises(VendorError) as caught:
        deliveries.poll()
    deliveries.close(1)
    assert caught.value.kind == "auth" and "403" in str(caught.value)
    assert enc_sim.stats.login_calls == 1


def test_same_name_different_exports_never_overwrite(
    enc_sim: EncouraSimulator, tmp_path: Path
) -> None:
    """Two exports with one file name both land; the second takes NAME-1."""
    enc_sim.add_export("prospect", "prospects.csv", b"first\r\n")
    enc_sim.add_export("prospect", "prospects.csv", b"second\r\n")
    deliveries = exports(enc_sim, tmp_path)
    deliveries.poll()
    assert deliveries.wait_idle(30)
    deliveries.close(5)
    assert sorted(landed(tmp_path).values()) == [b"first\r\n", b"second\r\n"]
    assert sorted(landed(tmp_path)) == ["prospect/prospects-1.csv", "prospect/prospects.csv"]


def test_sync_recovers_delivered_exports_never_landed(
    enc_sim: EncouraSimulator, tmp_path: Path
) -> None:
    """Exports listed (Delivered) by someone else are found through status=Delivered."""
    uid = enc_sim.add_export("score-reporter", "lost.csv", b"lost\r\n")
    elsewhere = exports(enc_sim, tmp_path / "elsewhere")
    elsewhere.client.list_exports("score-reporter", "NotDelivered")  # the trap, sprung
    elsewhere.close(1)
    deliveries = exports(enc_sim, tmp_path)
    assert deliveries.poll() == []
    from datetime import UTC, datetime, timedelta

    assert recover(deliveries, datetime.now(UTC) - timedelta(days=1)) == [uid]
    assert deliveries.deliver(uid) is not None
    deliveries.close(5)
    assert landed(tmp_path) == {"score-reporter/lost.csv": b"lost\r\n"}


@pytest.fixture
def start_encoura_daemon(
    tmp_path: Path, cb_sim: CollegeBoardSimulator, pymap_server: Any, enc_sim: EncouraSimulator
) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start() -> DaemonProcess:
        path = write_config(
            tmp_path,
            cb_sim,
            pymap_server,
            encoura=enc_sim,
            product_keys=("score-reporter", "prospect"),
            encoura_poll_interval="1s",
            retry_schedule=("0.5s", "1s"),
        )
        daemon = DaemonProcess(path)
        started.append(daemon)
        daemon.wait_event("daemon.ready", timeout=30)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
    assert_no_secrets(
        [line for d in started for line in d.lines],
        [enc_sim.api_key, enc_sim.password, cb_sim.password],
    )


@pytest.mark.e2e
def test_daemon_sigkilled_between_listing_and_download_loses_nothing(
    start_encoura_daemon: Callable[..., DaemonProcess],
    enc_sim: EncouraSimulator,
    tmp_path: Path,
) -> None:
    """Listed (so Delivered at the vendor), then killed before the bytes came: the next start
    lands it from the ledger, once, with short-lived tokens throughout."""
    enc_sim.token_lifetime = 2.0
    uid = enc_sim.add_generated_export("score-reporter", "big.csv", 3 * 1024 * 1024, seed=5)
    small = enc_sim.add_export("prospect", "p.csv", b"prospect\r\n")
    enc_sim.inject("download_url", 503, count=1000)
    daemon = start_encoura_daemon()
    daemon.wait_event("delivery.failed", uid=uid)
    daemon.kill()
    assert enc_sim.export(uid)["status"] == "Delivered"
    assert not landed(tmp_path)

    enc_sim.clear_faults()  # the outage is over
    again = start_encoura_daemon()
    again.wait_event("delivery.downloaded", uid=uid, timeout=30)
    again.wait_event("delivery.downloaded", uid=small, timeout=30)
    # A token expires and is replaced, and both keys are listed twice more: still nothing twice.
    logins, lists = enc_sim.stats.login_calls, enc_sim.stats.list_calls
    wait_until(lambda: enc_sim.stats.login_calls > logins and enc_sim.stats.list_calls >= lists + 4)
    assert again.stop() == 0
    files = landed(tmp_path)
    assert sorted(files) == ["prospect/p.csv", "score-reporter/big.csv"]
    assert hashlib.sha256(files["score-reporter/big.csv"]).hexdigest() == enc_sim.sha256_of(uid)
    assert enc_sim.stats.api_headers_on_download == 0
    assert enc_sim.stats.reused_url_rejections == 0


@pytest.mark.e2e
def test_daemon_sigkilled_mid_download_redoes_it(
    start_encoura_daemon: Callable[..., DaemonProcess],
    enc_sim: EncouraSimulator,
    tmp_path: Path,
) -> None:
    """Killed while the bytes stream: no partial file is visible, the next start lands it."""
    uid = enc_sim.add_generated_export("score-reporter", "slow.csv", 4 * 1024 * 1024, seed=9)
    enc_sim.throttle_bps = 1024 * 1024
    daemon = start_encoura_daemon()
    part = tmp_path / "files" / "encoura" / "score-reporter" / ".slow.csv.part"
    wait_until(lambda: part.exists() and part.stat().st_size > 0)  # the bytes are coming
    daemon.kill()
    assert not (part.parent / "slow.csv").exists()
    enc_sim.throttle_bps = None
    again = start_encoura_daemon()
    again.wait_event("delivery.downloaded", uid=uid, timeout=30)
    assert again.stop() == 0
    assert list(landed(tmp_path)) == ["score-reporter/slow.csv"]
    assert enc_sim.stats.reused_url_rejections == 0


def cli_config(sim: EncouraSimulator, tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"download_dir: {tmp_path / 'files'}\nstate_dir: {tmp_path / 'state'}\n"
        f"encoura: {{enabled: true, base_url: {sim.base_url}, api_key: {sim.api_key},"
        f" username: {sim.username}, password: {sim.password},"
        f" download_hosts: [{sim.download_host}]}}\n"
    )
    return config


def test_fetch_by_uid_once_then_already_downloaded(
    enc_sim: EncouraSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fetch encoura UID` lands an export found through the listing; a second fetch
    requests nothing; an unknown uid exits 1."""
    from scorefetch.cli import main

    uid = enc_sim.add_export("score-reporter", "one.csv", b"1\r\n")
    config = cli_config(enc_sim, tmp_path)
    assert main(["fetch", "-c", str(config), "encoura", uid]) == 0
    assert landed(tmp_path) == {"score-reporter/one.csv": b"1\r\n"}
    calls = enc_sim.stats.download_url_calls
    assert main(["fetch", "-c", str(config), "encoura", uid]) == 0
    assert "already downloaded" in capsys.readouterr().out
    assert enc_sim.stats.download_url_calls == calls
    assert main(["fetch", "-c", str(config), "encoura", "no-such-export"]) == 1


def test_fetch_by_uid_never_consumes_an_unconfigured_product(
    enc_sim: EncouraSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fetch encoura UID` lists NotDelivered only for configured product keys: an export of
    another product is found once it is Delivered (to whoever uses it), and nothing of
    that product is taken before."""
    from scorefetch.cli import main

    uid = enc_sim.add_export("prospect", "theirs.csv", b"1\r\n")
    other = enc_sim.add_export("prospect", "also-theirs.csv", b"2\r\n")
    config = cli_config(enc_sim, tmp_path)
    assert main(["fetch", "-c", str(config), "encoura", uid]) == 1
    assert "encoura.product_keys" in capsys.readouterr().err
    assert enc_sim.export(uid)["status"] == enc_sim.export(other)["status"] == "NotDelivered"
    enc_sim.mark_delivered(uid)  # the office's other tool took it
    assert main(["fetch", "-c", str(config), "encoura", uid]) == 0
    assert landed(tmp_path) == {"prospect/theirs.csv": b"1\r\n"}
    assert enc_sim.export(other)["status"] == "NotDelivered"


def test_status_lists_exports_listed_but_not_landed(
    enc_sim: EncouraSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An export remembered from a listing whose download keeps failing shows in `status`."""
    from scorefetch.cli import main

    uid = enc_sim.add_export("score-reporter", "pending.csv", b"x\r\n")
    config = cli_config(enc_sim, tmp_path)
    (tmp_path / "state").mkdir()
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    ledger.claim_all("encoura", [(uid, "score-reporter")], "listing")
    ledger.close()
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"waiting  Encoura       pending    {uid}" in out


def test_an_export_not_generated_yet_is_deferred_then_lands_on_a_later_poll(
    enc_sim: EncouraSimulator, tmp_path: Path
) -> None:
    """`listGenerated: false` and a 404 for its URL, longer than the whole retry schedule:
    deferred (never `failed`), looked at again on each poll, and landed once generated
    without anyone running `fetch`."""
    enc_sim.with_dialect(generated_after=4)
    uid = enc_sim.add_export("score-reporter", "late.csv", b"id\r\n1\r\n")
    deliveries = exports(enc_sim, tmp_path, product_keys=["score-reporter"])
    for _ in range(8):
        deliveries.poll()
        deliveries.wait_idle(10)
        row = deliveries.ledger.get("encoura", uid)
        assert row is not None and row.state != "failed"
        if row.state == "downloaded":
            break
    deliveries.close(5)
    assert landed(tmp_path) == {"score-reporter/late.csv": b"id\r\n1\r\n"}
    assert row is not None and row.state == "downloaded"


def test_a_listed_expired_export_fails_once_with_the_advice(
    enc_sim: EncouraSimulator, tmp_path: Path, log_lines: LogLines
) -> None:
    """`isExpired: true`: one delivery.failed reason=expired will_retry=false naming the
    uid and product, with the advice to ask Encoura to regenerate it; never asked again."""
    enc_sim.with_dialect(expire_every=1)
    uid = enc_sim.add_export("score-reporter", "old.csv", b"x")
    deliveries = exports(enc_sim, tmp_path, product_keys=["score-reporter"])
    deliveries.poll()
    assert deliveries.wait_idle(10)
    deliveries.poll()
    assert deliveries.wait_idle(10)
    deliveries.close(5)
    row = deliveries.ledger.get("encoura", uid)
    assert row is not None and row.state == "failed" and "regenerate" in (row.error or "")
    failed = log_lines.events("delivery.failed")
    assert [(f["reason"], f["will_retry"]) for f in failed] == [("expired", False)]
    assert uid in failed[0]["error"] and "score-reporter" in failed[0]["error"]


def test_sync_without_vendor_does_every_enabled_vendor(
    enc_sim: EncouraSimulator,
    cb_sim: CollegeBoardSimulator,
    pymap_server: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`sync` with no --vendor lists College Board and Encoura both, landing each one's file."""
    from scorefetch.cli import main

    config = write_config(tmp_path, cb_sim, pymap_server, encoura=enc_sim)
    cb_sim.publish("4300_20261120_000001.csv", b"cb\r\n")
    enc_sim.add_export("score-reporter", "act.csv", b"act\r\n")
    assert main(["sync", "-c", str(config)]) == 0
    landed = files_under(tmp_path / "files")
    assert landed == {
        "collegeboard/4300_20261120_000001.csv": b"cb\r\n",
        "encoura/score-reporter/act.csv": b"act\r\n",
    }, capsys.readouterr()


def test_an_export_whose_quantity_disagrees_is_suspect_and_one_that_agrees_is_not(
    enc_sim: EncouraSimulator, tmp_path: Path, log_lines: Any
) -> None:
    """Encoura's `quantity` is the rows of the csv less its header: off by two, the export
    lands and is delivery.suspect (kept, not retried); the sandbox's own files agree. A
    person hears of it: on_failure runs with the figures, the metric counts it, and
    `status` marks the file SUSPECT."""
    good = enc_sim.add_export("score-reporter", "good.csv", b"id\r\n1\r\n2\r\n")
    enc_sim.with_dialect(quantity_off=2)
    odd = enc_sim.add_export("score-reporter", "odd.csv", b"id\r\n1\r\n")
    deliveries = exports(enc_sim, tmp_path, product_keys=["score-reporter"])
    told = tmp_path / "told.txt"
    hook = tmp_path / "hook"
    hook.write_text(
        '#!/bin/sh\necho "$SCOREFETCH_EVENT $SCOREFETCH_FILENAME $SCOREFETCH_ROWS'
        f' $SCOREFETCH_EXPECTED_ROWS" >> {told}\n'
    )
    hook.chmod(0o755)
    hooks = Hooks(HooksConfig(on_failure=(str(hook),), timeout=10.0))
    metrics = Metrics(
        MetricsConfig(textfile=tmp_path / "m.prom"), deliveries.ledger, ["encoura"], imap=False
    )
    deliveries.events.subscribe(hooks)
    deliveries.events.subscribe(metrics)
    deliveries.poll()
    assert deliveries.wait_idle(30)
    deliveries.close(5)
    assert hooks.close(10)
    assert told.read_text() == "delivery.suspect odd.csv 1 3\n"
    assert b'scorefetch_suspect_files_total{vendor="encoura"} 1.0' in metrics.exposition()
    shown = {f["key"]: f for f in journeys(deliveries.ledger, [])}
    assert shown[odd]["suspect"] and shown[good]["suspect"] is None
    (suspect,) = log_lines.events("delivery.suspect")
    assert suspect["uid"] == odd and suspect["rows"] == 1 and suspect["expected_rows"] == 3
    rows = {uid: deliveries.ledger.get("encoura", uid) for uid in (good, odd)}
    assert all(r is not None and r.state == "downloaded" for r in rows.values())
    assert rows[good].suspect == ""  # type: ignore[union-attr]


class LosesAnswers(EncouraSimulator):
    """Encoura whose next `lose` NotDelivered listings commit (mark their exports Delivered)
    but whose answer never arrives: a 502 from a gateway, a read timeout, a SIGKILL between
    the answer and the ledger's commit — every one leaves the same trace."""

    lose = 0

    def _listing(self, org: str, query: dict[str, str]) -> tuple[int, object]:
        code, body = super()._listing(org, query)
        if query.get("status") == "NotDelivered" and self.lose:
            self.lose -= 1
            return 502, {"message": "Bad Gateway"}
        return code, body


def test_a_first_listing_lost_after_the_vendor_committed_loses_no_export_of_any_age(
    tmp_path: Path,
) -> None:
    """The very first pass (a new install, or a key just added): the backlog is of any age,
    and its listing is lost after Encoura marked it Delivered. The next pass recovers every
    one of them — 0 to 30 days old — and nothing of the archive Delivered before (a year
    of exports someone else downloaded is not replayed)."""
    with LosesAnswers() as sim:
        now = datetime.now(UTC)
        archived = sim.add_export("score-reporter", "old.csv", b"a\r\n", created_at=now)
        sim.mark_delivered(archived)
        backlog = {
            sim.add_export(
                "score-reporter",
                f"b-{age}.csv",
                f"a\r\n{age}\r\n".encode(),
                created_at=now - timedelta(days=age),
            ): age
            for age in (0, 2, 5, 30)
        }
        sim.lose = 1
        deliveries = exports(sim, tmp_path, product_keys=["score-reporter"])
        with pytest.raises(VendorError):
            deliveries.poll()
        deliveries.poll()
        assert deliveries.wait_idle(30)
        deliveries.close(5)
        assert landed(tmp_path) == {
            f"score-reporter/b-{age}.csv": f"a\r\n{age}\r\n".encode() for age in backlog.values()
        }
        assert deliveries.ledger.get("encoura", archived) is None


def test_a_fetch_cut_off_mid_listing_loses_no_other_export(tmp_path: Path) -> None:
    """`scorefetch fetch UID` lists NotDelivered to find a new export; that listing is
    lost after Encoura committed it, with another new export in it. The daemon's next pass
    recovers the other one (fetch marks its listing too), and fetch again finds its own."""
    with LosesAnswers() as sim:
        deliveries = exports(sim, tmp_path, product_keys=["score-reporter"])
        deliveries.poll()  # the daemon has listed before: its history is kept
        wanted = sim.add_export("score-reporter", "wanted.csv", b"w\r\n")
        sim.add_export("score-reporter", "other.csv", b"o\r\n")
        sim.lose = 1
        with pytest.raises(VendorError):
            locate(deliveries, [wanted])
        deliveries.poll()  # the daemon's next pass
        assert deliveries.wait_idle(30)
        assert locate(deliveries, [wanted]) == []  # recovered by that pass too
        deliveries.close(5)
        assert landed(tmp_path) == {
            "score-reporter/wanted.csv": b"w\r\n",
            "score-reporter/other.csv": b"o\r\n",
        }

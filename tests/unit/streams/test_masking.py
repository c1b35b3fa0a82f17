"""Secrets never printed: log records and uncaught tracebacks are masked."""

import logging
import subprocess
import sys
import threading
import time

import pytest

from streams import masking
from streams.config import load_settings
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def hooks_restored():
    """Each test installs masking in this process: put the hooks back as they were."""
    saved = sys.excepthook, threading.excepthook, logging.getLogRecordFactory()
    yield
    sys.excepthook, threading.excepthook = saved[:2]
    logging.setLogRecordFactory(saved[2])


def server_settings(**env):
    return load_settings(env={"OTELPIPE_CLICKHOUSE_DSN": "https://ch:8443",
                              **{f"OTELPIPE_{k.upper()}": v for k, v in env.items()}})


def uncaught(text: str, capsys) -> str:
    """What the process prints for an exception nobody caught whose message is ``text``."""
    try:
        raise RuntimeError(text)
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    return capsys.readouterr().err


def test_mask_covers_urls_credentials_and_configured_secrets():
    text = ("dsn https://otel:s3cret@ch:8443/x header Authorization: BEARER abcdefgh12345 basic dXNlcjpwYXNz "
            "and the token qq-configured-token-77")
    masked = masking.mask(text, ["qq-configured-token-77"])
    for secret in ("s3cret", "abcdefgh12345", "dXNlcjpwYXNz", "qq-configured-token-77"):
        assert secret not in masked
    assert "https://otel:****@ch:8443/x" in masked


@pytest.mark.parametrize("text", ["x" * 1_000_000, "://:" * 250_000, "a://b:" * 150_000, "bearer " * 150_000,
                                  "h" + "ttps://u:p" * 100_000 + "\udcff"],
                         ids=["long_word", "many_schemes", "many_users", "many_bearers", "surrogate"])
def test_masking_stays_linear_on_what_producers_can_put_in_a_log_line(text):
    """A log line may quote a produced value: the patterns run on RE2 (a backtracking engine took
    minutes on a 1 MB word, retrying the URL scheme at every letter)."""
    start = time.process_time()
    masked = masking.mask(text + " https://u:pw-linear@h", ["pw-never"])
    assert time.process_time() - start < 2.0  # milliseconds on RE2; minutes on a backtracking engine
    assert masked.endswith("https://u:****@h")


def test_every_secret_setting_is_found_whatever_its_section():
    settings = load_settings(env={"OTELPIPE_CLICKHOUSE_DSN": "https://ch:8443",
                                  "OTELPIPE_CLICKHOUSE_PASSWORD": "pw-from-env-1",
                                  "OTELPIPE_WORKER_QUERY_TOKEN": "tok-from-env-22",
                                  "OTELPIPE_CONTROL_KEY": "control-key-from-env-333"})
    assert set(masking.secret_values(settings)) >= {"pw-from-env-1", "tok-from-env-22", "control-key-from-env-333"}


def test_log_records_and_tracebacks_are_masked(caplog):
    settings = load_settings(env={"OTELPIPE_CLICKHOUSE_DSN": "https://ch:8443",
                                  "OTELPIPE_CLICKHOUSE_PASSWORD": "pw-in-a-log-9"})
    masking.install(settings)
    masking.install(settings)  # installed twice: one layer, not two
    log = logging.getLogger("otelpipe.test")
    with caplog.at_level(logging.INFO):
        log.info("connecting to %s with %s", "https://u:hunter2@h/x", "pw-in-a-log-9")
        try:
            raise RuntimeError("refused: pw-in-a-log-9")
        except RuntimeError:
            log.exception("failed")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert "hunter2" not in text and "pw-in-a-log-9" not in text and "****" in text


def test_an_uncaught_error_of_a_command_is_masked(tmp_path):
    code = ("import argparse; from streams.cli.common import settings_from; settings_from(argparse.Namespace()); "
            "raise RuntimeError('cannot reach https://u:zz-leak-1@h/x with pw-uncaught-55')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OTELPIPE_CLICKHOUSE_DSN": "https://ch:8443",
                               "OTELPIPE_CLICKHOUSE_PASSWORD": "pw-uncaught-55",
                               "OTELPIPE_WORKER_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 1 and "RuntimeError" in proc.stderr
    assert "zz-leak-1" not in proc.stderr and "pw-uncaught-55" not in proc.stderr


def test_a_masked_record_formats_with_a_percent_formatter():
    """mode's formatter (the worker's) reads args again: a masked record must still format."""
    settings = load_settings(env={"OTELPIPE_CLICKHOUSE_DSN": "https://ch:8443",
                                  "OTELPIPE_CLICKHOUSE_PASSWORD": "pw-format-7"})
    masking.install(settings)
    record = logging.getLogger("otelpipe.test").makeRecord("x", logging.INFO, "f", 1, "pw is %s", ("pw-format-7",), None)
    assert record.getMessage() == "pw is ****" and record.args == ()  # masked once, held masked
    assert logging.Formatter("%(message)s").format(record) == "pw is ****"
    assert record.getMessage() == "pw is ****"


def test_a_record_no_handler_takes_is_never_formatted():
    """A debug call under a higher level costs no formatting (aiokafka logs every produced value at
    debug): the record masks its text only when a handler formats it."""
    masking.install(server_settings(clickhouse_password="pw-lazy-3333"))

    class Loud:
        formatted = 0

        def __str__(self) -> str:
            Loud.formatted += 1
            return "pw-lazy-3333 " + "x" * 1_000_000

    log = logging.getLogger("otelpipe.test.lazy")
    log.setLevel(logging.DEBUG)
    log.propagate = False  # only the handlers here (pytest's own would format everything)
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: None  # type: ignore[method-assign]
    log.addHandler(handler)
    try:
        log.debug("sending %s", Loud())
        assert Loud.formatted == 0
        stream = __import__("io").StringIO()
        shown = logging.StreamHandler(stream)
        shown.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(shown)
        log.debug("sending %s", Loud())
        assert Loud.formatted == 1 and "pw-lazy-3333" not in stream.getvalue() and "****" in stream.getvalue()
        log.removeHandler(shown)
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
        log.propagate = True


def test_installing_again_replaces_the_hooks_and_the_new_secrets_apply(capsys):
    masking.install(server_settings(clickhouse_password="pw-first-1111"))
    hook, factory = sys.excepthook, logging.getLogRecordFactory()
    masking.install(server_settings(clickhouse_password="pw-second-2222"))
    masking.install(server_settings(clickhouse_password="pw-second-2222"))
    assert sys.excepthook is hook  # replaced, not wrapped
    assert logging.getLogRecordFactory().wrapped is factory.wrapped  # one layer over logging's own
    shown = uncaught("refused: pw-second-2222", capsys)
    assert "RuntimeError" in shown and "pw-second-2222" not in shown and "****" in shown
    record = logging.getLogger("otelpipe.test").makeRecord("x", logging.INFO, "f", 1, "pw %s", ("pw-second-2222",),
                                                          None)
    assert record.getMessage() == "pw ****"


def test_a_query_token_made_or_read_after_install_is_masked(tmp_path, capsys):
    from streams.agents.query_access import TOKEN_FILE, query_token

    settings = server_settings(worker_data_dir=str(tmp_path / "worker"))
    masking.install(settings)
    made = query_token(settings, create=True)  # the worker makes its token at start, after install
    shown = uncaught(f"cannot serve with {made}", capsys)
    assert "RuntimeError" in shown and made not in shown
    # A token file another process writes later (a CLI started before the worker reads it then).
    cli = server_settings(worker_data_dir=str(tmp_path / "cli"))
    masking.install(cli)
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / TOKEN_FILE).write_text("tok-written-later-5555\n")
    assert query_token(cli) == "tok-written-later-5555"
    record = logging.getLogger("otelpipe.test").makeRecord("x", logging.INFO, "f", 1, "Bearer-less %s",
                                                          ("tok-written-later-5555",), None)
    assert record.getMessage() == "Bearer-less ****"


def test_a_control_key_made_after_install_is_masked(tmp_path, capsys):
    from streams.agents.control_key import control_key

    settings = server_settings(worker_data_dir=str(tmp_path))
    masking.install(settings)
    key = control_key(settings).decode()  # made on first use
    assert key not in uncaught(f"signing with {key}", capsys)


def test_an_uncaught_error_in_a_thread_is_masked(capsys):
    masking.install(server_settings(clickhouse_password="pw-in-a-thread-66"))
    masking.install(server_settings(clickhouse_password="pw-in-a-thread-66"))

    def fail():
        raise RuntimeError("cannot reach https://u:zz-thread-leak@h/x with pw-in-a-thread-66")
    thread = threading.Thread(target=fail, name="flusher")
    thread.start()
    thread.join()
    shown = capsys.readouterr().err
    assert "Exception in thread flusher" in shown and "RuntimeError" in shown
    assert "pw-in-a-thread-66" not in shown and "zz-thread-leak" not in shown


def test_a_thread_that_exits_says_nothing(capsys):
    masking.install(server_settings())
    thread = threading.Thread(target=sys.exit)
    thread.start()
    thread.join()
    assert capsys.readouterr().err == ""


def test_an_uncaught_error_in_a_thread_of_a_command_is_masked(tmp_path):
    code = ("import argparse, threading\n"
            "from streams.cli.common import settings_from\n"
            "settings_from(argparse.Namespace())\n"
            "def fail():\n"
            "    raise RuntimeError('cannot reach https://u:zz-leak-2@h/x with pw-thread-77')\n"
            "t = threading.Thread(target=fail)\n"
            "t.start()\n"
            "t.join()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OTELPIPE_CLICKHOUSE_DSN": "https://ch:8443",
                               "OTELPIPE_CLICKHOUSE_PASSWORD": "pw-thread-77",
                               "OTELPIPE_WORKER_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 0 and "Exception in thread" in proc.stderr and "RuntimeError" in proc.stderr
    assert "zz-leak-2" not in proc.stderr and "pw-thread-77" not in proc.stderr

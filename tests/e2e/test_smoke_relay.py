from retreatkit.testing import RelayProcess


def test_relay_reports_status(relay: RelayProcess) -> None:
    status = relay.status()
    assert status["relay"]["up"] is True
    assert status["relay"]["connections_open"] == 0
    assert status["relay"]["waiting_senders"] == 0

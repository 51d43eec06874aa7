"""The command line's routing: a command's own arguments reach it untouched, whatever
other command names they contain (`./d11 docker compose ps` is docker's, not compose's)."""

from __future__ import annotations

import pytest

from infra import cli, dockerlab


@pytest.mark.parametrize(
    ("argv", "handed"),
    [
        (["docker", "compose", "ps"], ["compose", "ps"]),
        (["docker", "compose", "--", "exec", "-T", "phone", "true"],
         ["compose", "--", "exec", "-T", "phone", "true"]),
        (["--topology", "infra/topology.yaml", "docker", "up"], ["up"]),
    ],
)  # fmt: skip
def test_docker_gets_its_own_arguments(monkeypatch, argv, handed):
    seen = []
    monkeypatch.setattr(dockerlab, "main", lambda rest: seen.append(rest) or 0)
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 0
    assert seen == [handed]


def test_compose_dashdash_is_dropped_before_compose(monkeypatch):
    calls = []
    monkeypatch.setattr(dockerlab, "ensure_engine", lambda: None)
    monkeypatch.setattr(dockerlab, "compose", lambda *a, **k: calls.append(a) or 0)
    assert dockerlab.main(["compose", "--", "exec", "-T", "phone", "true"]) == 0
    assert calls == [("exec", "-T", "phone", "true")]

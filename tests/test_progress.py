"""Live progress: the stage runner's events and the CLI's rich bars, on a real flow (fake server)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from personahub.cli import live_progress
from personahub.flows.synthesize import SynthesizeParams, synthesize
from personahub.tasks.core import progress
from personahub.tasks.synthesis.personas import PersonaSelection
from test_synthesis import NO_DIVERSITY, responder_for, write_personas


def test_stage_events_and_the_bars_follow_the_run(server, tmp_path: Path) -> None:
    personas = write_personas(tmp_path / "personas.parquet", 6)
    server.responder = responder_for("instructions", set())
    events: list[tuple[str, int, int, bool, int]] = []

    def record(p: progress.StageProgress) -> None:
        events.append((p.stage, p.shards, p.shards_done, p.finished, progress.llm_counters().calls - p.llm_at_start.calls))

    screen = io.StringIO()
    stop = progress.watch(record)
    try:
        with live_progress(True, console=Console(file=screen, force_terminal=True, width=200)):
            synthesize(SynthesizeParams(use_case="instructions", mode="zero-shot", personas=[str(personas)],
                                        store=str(tmp_path / "store"), llm_base_url=server.base_url,
                                        diversity=NO_DIVERSITY, shard_rows=2, selection=PersonaSelection(n=6)))
    finally:
        stop()
    synth = [e for e in events if e[0] == "synthesize_instructions"]
    assert [e[2] for e in synth] == [0, 1, 2, 3, 3] and synth[-1][3] and all(e[1] == 3 for e in synth)
    assert synth[-1][4] == server.calls == 6, "the calls counted while the stage ran are the server's"
    shown = screen.getvalue()
    assert "synthesize_instructions" in shown and "3/3" in shown and "6 calls" in shown
